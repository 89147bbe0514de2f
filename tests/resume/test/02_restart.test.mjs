// A graceful restart while a publisher keeps publishing (issue 20, "Across a restart"):
// SIGTERM tells the client 4200, pushbox exits, a new pushbox starts on the same port and state
// directory. The subscribed pusher-js client (with a wsPath token) must get every event that got
// a 200, exactly once, in order: those published while pushbox drained, and those published after
// the restart but before pusher-js came back (it waits out its own retry timer, ~15 s), come from
// the event log on disk and the resume state saved at the stop.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Agent, startBox, token, publish, routesResumePath, describeSeq, sleep, log } from '../lib/harness.mjs';

let agent, box;
const R = { status: new Map(), sentAt: new Map() };

before(async () => {
  agent = await Agent.start();
  box = await startBox({ name: 'R' });
});

after(async () => {
  await agent?.close();
  await box?.remove();
});

describe('graceful restart while publishing', () => {
  before(async () => {
    R.routed = process.env.RESUME_TOKENLESS ? true : await routesResumePath(box); // see agent.mjs
    await agent.pusher('rs', box, R.routed ? { token: token() } : {});
    await agent.subscribe('rs', 'restart');
    R.firstId = agent.socketIds('rs').at(-1);

    let stop = false;
    let n = 0;
    // One publisher, sequential (so position order = n order), every ~100 ms, through the restart:
    // pusher-js is away ~15 s (its retry timer), so ~150 events are missed, within the default
    // max_events (300). At 20 ms it missed ~630 and resume rightly replayed nothing.
    const publisher = (async () => {
      while (!stop && n < 3000) {
        n += 1;
        R.sentAt.set(n, Date.now());
        R.status.set(n, await publish(box, 'restart', { n }));
        await sleep(100);
      }
    })();

    await sleep(1500);
    R.termAt = Date.now();
    R.exit = await box.stop(10000);
    R.downAt = Date.now();
    log(`pushbox stopped in ${R.downAt - R.termAt} ms (${JSON.stringify(R.exit)})`);
    await box.start();
    R.upAt = Date.now();
    // The client comes back on its own (bounded), then publishing goes on for a second.
    await agent.waitSoft(() => {
      const ids = agent.socketIds('rs');
      return ids.at(-1) !== R.firstId && agent.msgs('rs', 'restart').some((e) => e.event === 'pusher:subscription_succeeded' && e.t > R.upAt);
    }, { timeout: 40000 });
    R.backAt = Date.now();
    log(`client back ${R.backAt - R.upAt} ms after pushbox was up again`);
    await sleep(1000);
    stop = true;
    await publisher;
    const ok = [...R.status].filter(([, s]) => s === 200).map(([k]) => k);
    R.ok = ok;
    await agent.waitSoft(() => agent.ns('rs', 'restart').includes(ok.at(-1)), { timeout: 10000 });
    await sleep(1000);
  });

  it('pushbox stopped gracefully (exit 0 after SIGTERM) and came back on the same state dir', () => {
    assert.equal(R.exit?.code, 0, `exit ${JSON.stringify(R.exit)}; log:\n${box.log(3000)}`);
  });

  it('the client reconnected and events were accepted while it was away (else this proves nothing)', () => {
    const ids = agent.socketIds('rs');
    assert.ok(ids.length >= 2 && ids.at(-1) !== R.firstId, `no reconnect: ${JSON.stringify(ids)}`);
    // The reconnect's subscription_succeeded; events with a 200 sent between the stop and it were missed.
    const resub = agent.msgs('rs', 'restart').find((e) => e.event === 'pusher:subscription_succeeded' && e.t > R.upAt);
    assert.ok(resub, 'the client never re-subscribed after the restart');
    const away = R.ok.filter((k) => R.sentAt.get(k) >= R.termAt && R.sentAt.get(k) < resub.t);
    log(`${R.ok.length} events got 200; ${away.length} of them while the client was away`);
    assert.ok(away.length >= 1, 'no event got a 200 while the client was away');
    assert.ok(away.length <= 300, `${away.length} events missed: more than the default max_events, resume would rightly give up`);
  });

  it('the client got every event that got a 200, exactly once, in order', () => {
    if (!R.routed) assert.fail('this pushbox answers 404 on /r/<token>/app/<key>: no resume feature');
    const got = agent.ns('rs', 'restart');
    const okSet = new Set(R.ok);
    const gotOk = got.filter((k) => okSet.has(k));
    assert.deepEqual(gotOk, R.ok, describeSeq(gotOk, R.ok));
    // An event whose answer was lost (connection reset mid-request) may or may not be in the log:
    // at most once, and never out of order.
    const dups = got.filter((k, i) => got.indexOf(k) !== i);
    assert.deepEqual(dups, [], `duplicates: ${dups}`);
    assert.ok(got.every((k, i) => i === 0 || k > got[i - 1]), `out of order: ${got}`);
  });
});
