// Laravel Echo in Debian's chromium with the one resume option (wsPath token), cut for 10 s.
//
// The cut is real: chromium runs inside the clients' network namespace and the namespace's end of
// the veth goes down, so the browser's TCP connection simply stops carrying packets (no FIN, no
// RST), as on a Wi-Fi drop. Chromium also sees its only interface go away (navigator.onLine
// false, then true): pusher-js's web build pings on `offline` and retries at once on `online`,
// which is exactly the browser behaviour the node build cannot show.
// The page shows every event in a list; each must be shown once, in order, on both a public and
// a private channel (the private one re-authorised through /broadcasting/auth with the new socket).
//
// Then the browser-only rule of zero-change resume: a tab that navigates away closes its socket
// with 1001 (going away) and must never be resumed, even when the same user comes back from the
// same browser within the window (the node suite's zero-change case shows the same match does
// replay after a cut).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  Agent, startBox, cut, heal, publish, routesResumePath, describeSeq, range, sleep, log, APPS, REPO_ROOT,
} from '../lib/harness.mjs';

let agent, box;
const R = { failures: [] };
const CHANNELS = ['echo-public', 'private-echo-private'];

before(async () => {
  agent = await Agent.start();
  // pong_timeout 3: in the 1001 control below, pushbox must give up on the left page's socket
  // during the cut, before the page's 1001 (queued in chromium) can reach it at link-up.
  box = await startBox({ name: 'E', server: { pong_timeout: 3 } });
});

after(async () => {
  await agent?.close();
  await box?.remove();
});

describe('Laravel Echo in chromium, wsPath token, 10 s cut', () => {
  before(async () => {
    R.routed = process.env.RESUME_TOKENLESS ? true : await routesResumePath(box); // see agent.mjs
    const notoken = !R.routed || !!process.env.RESUME_TOKENLESS;
    await agent.call('browser', { host: box.host, port: box.port, key: APPS.main.key, notoken }, 60000);
    await agent.waitFor(() => CHANNELS.every((ch) => agent.msgs('browser', ch).some((e) => e.event === 'pusher:subscription_succeeded')),
      { timeout: 30000, what: 'the page subscribed to both channels' });
    R.firstId = agent.socketIds('browser').at(-1);
    const pub = async (n) => {
      for (const ch of CHANNELS) {
        const s = await publish(box, ch, { n });
        if (s !== 200) R.failures.push(`${ch} n=${n} → ${s}`);
      }
    };
    await pub(1); await pub(2);
    await agent.waitSoft(() => CHANNELS.every((ch) => agent.ns('browser', ch).includes(2)), { timeout: 5000 });
    await sleep(1200);
    R.cutAt = cut();
    await sleep(1000);
    for (const n of range(3, 6)) { await pub(n); await sleep(300); }
    await sleep(R.cutAt + 10000 - Date.now());
    R.healAt = heal();
    await agent.waitSoft(() => {
      const ids = agent.socketIds('browser');
      return ids.at(-1) && ids.at(-1) !== R.firstId
        && CHANNELS.every((ch) => agent.msgs('browser', ch).some((e) => e.event === 'pusher:subscription_succeeded' && e.t > R.healAt));
    }, { timeout: 40000 });
    R.backAt = Date.now();
    log(`chromium back ${R.backAt - R.healAt} ms after the link came up`);
    await pub(7);
    await agent.waitSoft(() => CHANNELS.every((ch) => agent.ns('browser', ch).includes(7)), { timeout: 10000 });
    await sleep(1500);
    R.page = await agent.call('browserState');
    const artifacts = path.join(REPO_ROOT, 'artifacts');
    fs.mkdirSync(artifacts, { recursive: true });
    await agent.call('browserShot', { file: path.join(artifacts, 'resume-echo-chromium.png') }).catch(() => {});
    await agent.call('browserClose');
  });

  it('the page used the documented wsPath token and every publish got 200', () => {
    assert.deepEqual(R.failures, []);
    if (!R.routed) assert.fail('this pushbox answers 404 on /r/<token>/app/<key>: no resume feature (the page ran without a token)');
    assert.match(R.page.wsPath || '', /^\/r\/[0-9a-f]{32}$/);
  });

  it('chromium noticed the cut and reconnected with a new socket id', () => {
    const ids = agent.socketIds('browser');
    assert.ok(ids.length >= 2 && ids.at(-1) !== R.firstId, `socket ids ${JSON.stringify(ids)}; states ${JSON.stringify(R.page.states)}`);
  });

  it('every event shown once, in order, on the public and the private channel', () => {
    if (!R.routed) assert.fail('no resume feature in this pushbox');
    for (const ch of CHANNELS) {
      const got = R.page.received.filter((e) => e.channel === ch).map((e) => e.n);
      assert.deepEqual(got, range(1, 7), `${ch}: ${describeSeq(got, range(1, 7))}`);
      const shown = R.page.shown.filter((s) => s.startsWith(`${ch} #`));
      assert.deepEqual(shown, range(1, 7).map((n) => `${ch} #${n}`), `${ch}: the list shows ${JSON.stringify(shown)}`);
    }
  });
});

describe('zero-change presence in chromium: a page left (close 1001) is not resumed', () => {
  const Q = {};
  const CH = 'presence-echo-room';
  before(async () => {
    await agent.call('browser', { host: box.host, port: box.port, key: APPS.main.key, notoken: true, query: '&room=1&user=u-tab' }, 60000);
    await agent.waitFor(() => agent.msgs('browser', CH).some((e) => e.event === 'pusher:subscription_succeeded'), { timeout: 30000, what: 'joined the room' });
    Q.s1 = await publish(box, CH, { n: 1 });
    await agent.waitSoft(() => agent.ns('browser', CH).includes(1), { timeout: 5000 });
    Q.leftAt = Date.now();
    await agent.call('browserGoto', { where: 'about:blank' }, 30000); // unload: WebSocket closed 1001
    await sleep(500);
    Q.s23 = [await publish(box, CH, { n: 2 }), await publish(box, CH, { n: 3 })];
    Q.backAt = Date.now();
    await agent.call('browserGoto', { where: 'page' }, 30000);
    await agent.waitSoft(() => agent.msgs('browser', CH).some((e) => e.event === 'pusher:subscription_succeeded' && e.t > Q.backAt), { timeout: 20000 });
    await sleep(1000); // a replay would come right after subscription_succeeded
    Q.s4 = await publish(box, CH, { n: 4 });
    await agent.waitSoft(() => agent.ns('browser', CH).includes(4), { timeout: 5000 });
    await sleep(1000);

    // The control: the same reload, but during a cut, so the 1001 never reaches pushbox (it ends
    // the socket itself on the missing pong). Now the same user coming back IS resumed, which is
    // what makes the assertion above mean something (and what README calls a reload duplicate).
    Q.cutAt = cut();
    await agent.call('browserGoto', { where: 'about:blank' }, 30000);
    Q.s56 = [await publish(box, CH, { n: 5 }), await publish(box, CH, { n: 6 })];
    await sleep(Q.cutAt + 8000 - Date.now()); // activity_timeout 3 + pong_timeout 3: pushbox gave up
    Q.healAt = heal();
    await agent.call('browserGoto', { where: 'page' }, 30000);
    await agent.waitSoft(() => agent.msgs('browser', CH).some((e) => e.event === 'pusher:subscription_succeeded' && e.t > Q.healAt), { timeout: 20000 });
    await sleep(1000);
    Q.s7 = await publish(box, CH, { n: 7 });
    await agent.waitSoft(() => agent.ns('browser', CH).includes(7), { timeout: 5000 });
    await sleep(1000);
  });

  it('the page was live before leaving and after coming back', () => {
    if (!R.routed) assert.fail('no resume feature in this pushbox');
    assert.deepEqual([Q.s1, ...Q.s23, Q.s4], [200, 200, 200, 200]);
    const before = agent.msgs('browser', CH).filter((e) => e.event === 'seq' && e.t < Q.leftAt).map((e) => e.data.n);
    assert.deepEqual(before, [1]);
    assert.ok(agent.msgs('browser', CH).some((e) => e.event === 'pusher:subscription_succeeded' && e.t > Q.backAt), 'the page did not join again');
  });

  it('the new page gets only what is published after it joined (2 and 3 are not replayed)', () => {
    const after = agent.msgs('browser', CH).filter((e) => e.event === 'seq' && e.t > Q.backAt && e.t < Q.cutAt).map((e) => e.data.n);
    assert.deepEqual(after, [4], `after coming back: ${describeSeq(after, [4])}`);
  });

  it('control: left during a cut (no 1001 reached pushbox), the same user coming back gets 5 and 6 replayed', () => {
    if (!R.routed) assert.fail('no resume feature in this pushbox');
    assert.deepEqual([...Q.s56, Q.s7], [200, 200, 200]);
    const after = agent.msgs('browser', CH).filter((e) => e.event === 'seq' && e.t > Q.healAt).map((e) => e.data.n);
    const firsts = after.filter((n, i) => after.indexOf(n) === i);
    assert.deepEqual(firsts, [5, 6, 7], `after the cut: ${describeSeq(after, [5, 6, 7])}`);
  });
});
