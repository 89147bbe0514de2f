// (5) Redis restart while publishers keep publishing: one publisher on A and one on B, each
// sending event after event (the next once the last was answered) to channel rr; subscribers on
// A, B and C. Redis is killed with -9 and restarted on the same directory, first with AOF
// (appendonly yes, everysec), then without persistence (appendonly no: it comes back empty).
// Every event answered 200 must reach every subscriber exactly once, in order per publisher; an
// event answered with an error status must reach nobody (a 503 means not stored); no subscriber
// is disconnected. After the data loss, presence must converge again (the nodes resync).
import { within } from '../lib/check.mjs';
import { sdkFor, sleep } from '../lib/world.mjs';
import { exactlyOnceInOrder } from './partition.mjs';
import { httpAgrees } from './presence.mjs';

const CHAN = 'rr';

function publisher(node, p) {
  const sdk = sdkFor(node);
  const st = { acked: [], refused: [], unknown: [], stop: false };
  st.done = (async () => {
    for (let i = 0; i < 5000 && !st.stop; i++) {
      try {
        const r = await sdk.trigger(CHAN, 'e', { p, i });
        if (r.status === 200) st.acked.push(i); else st.refused.push(i);
      } catch (e) {
        // The SDK throws on non-2xx with .status; a network error or timeout has none.
        if (e.status) st.refused.push(i); else st.unknown.push(i);
      }
      await sleep(20);
    }
  })();
  return st;
}

async function round(ctx, c, aof, subs) {
  const { nodes, engine } = ctx;
  const label = aof ? 'with AOF' : 'without persistence';
  // A marker written before the kill tells whether Redis came back with its data (the nodes
  // re-forward their spool after a loss, so the bus length alone says nothing).
  const marker = `pbt-test-marker-${aof}`;
  await engine.cli(['SET', marker, '1']);
  const pubs = { [`A-${aof}`]: publisher(nodes.a, `A-${aof}`), [`B-${aof}`]: publisher(nodes.b, `B-${aof}`) };
  await sleep(1500);
  await engine.kill9();
  const killedAt = Date.now();
  await sleep(1500);
  await engine.start({ aof });
  const kept = (await engine.cli(['GET', marker])).reply === '1';
  c.note(`${label}: Redis down ${Date.now() - killedAt} ms`);
  // The scenario is what it says: AOF keeps the data, no persistence loses it.
  c.ok(kept === aof, `${label}: Redis came back ${aof ? 'with' : 'without'} its data`, `marker key ${kept ? 'kept' : 'lost'}`);
  await sleep(3000);
  for (const st of Object.values(pubs)) st.stop = true;
  await Promise.all(Object.values(pubs).map((st) => st.done));
  for (const [p, st] of Object.entries(pubs)) {
    c.ok(st.acked.length > 0, `${label}: publisher ${p} got 200s`, `acked ${st.acked.length}, refused ${st.refused.length}, unknown ${st.unknown.length}`);
    c.note(`${label}: publisher ${p}: ${st.acked.length} acked, ${st.refused.length} refused, ${st.unknown.length} without answer`);
  }
  const complete = () => subs.every((s) => Object.entries(pubs).every(([p, st]) => exactlyOnceInOrder(s, CHAN, 'e', p, st.acked) === ''));
  const ok = await within(25000, complete, 200);
  if (!ok) c.note(`${label}: not complete after 25 s`);
  await sleep(1000);
  for (const s of subs) {
    for (const [p, st] of Object.entries(pubs)) {
      const sym = exactlyOnceInOrder(s, CHAN, 'e', p, st.acked);
      c.ok(sym === '', `${label}: every 200-acked event of ${p} exactly once and in order on ${s.node.name}`, sym);
      const got = new Set(s.got(CHAN, 'e').filter((d) => d.p === p).map((d) => d.i));
      const leaked = st.refused.filter((i) => got.has(i));
      c.ok(leaked.length === 0, `${label}: events refused to ${p} reach nobody on ${s.node.name}`, `delivered: ${leaked.slice(0, 8)}`);
    }
    c.ok(s.state === 'connected', `${label}: the subscriber on ${s.node.name} stayed connected`, s.state);
  }
  // Presence after the restart: the same answer everywhere, equal to the truth.
  const agreed = await within(20000, async () => {
    const probe = { passed: 0, failures: [], ok(x) { if (!x) this.failures.push(1); return !!x; } };
    await httpAgrees(ctx, 'presence-rr', probe, '');
    return probe.failures.length === 0;
  }, 500);
  if (!agreed) await httpAgrees(ctx, 'presence-rr', c, `${label}: presence after the restart`);
  else c.ok(true, `${label}: presence after the restart equals the truth on every node`);
}

export async function redisRestart(ctx, c) {
  const { fleet, nodes } = ctx;
  const subs = [];
  for (const n of [nodes.a, nodes.b, nodes.c]) {
    const s = await fleet.open(n, { user: `r${n.name}` });
    await s.subscribe(CHAN);
    s.record(CHAN, 'e');
    await s.subscribe('presence-rr');
    subs.push(s);
  }
  await round(ctx, c, true, subs);
  ctx.hooksResetAt = ctx.receiver.mark(); // webhook state before this point may be lost with the data
  await round(ctx, c, false, subs);
}
