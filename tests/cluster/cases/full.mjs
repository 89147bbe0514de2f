// (extra) Redis full: `CONFIG SET maxmemory 1` with `noeviction` makes Redis refuse every write
// (OOM) while it still answers reads. For ~4 s publishers on A and B keep publishing and a user
// joins a presence channel on C. Accepted still means durable: every publish is answered 200 (the
// local spool), and once Redis takes writes again every event reaches every subscriber on A, B, C
// exactly once, in order per publisher; the join completes late, not lost, and A's observer and
// the webhooks see one member_added for it.
import { within } from '../lib/check.mjs';
import { sdkFor, sleep } from '../lib/world.mjs';
import { exactlyOnceInOrder } from './partition.mjs';

const CHAN = 'full-ev';
const PRES = 'presence-full';

async function publish(node, p, n, gapMs) {
  const sdk = sdkFor(node);
  const acked = [];
  const failed = [];
  for (let i = 0; i < n; i++) {
    try {
      const r = await sdk.trigger(CHAN, 'e', { p, i });
      if (r.status === 200) acked.push(i); else failed.push(`${i}:${r.status}`);
    } catch (e) {
      failed.push(`${i}:${e.status || e.message}`);
    }
    await sleep(gapMs);
  }
  return { acked, failed };
}

export async function full(ctx, c) {
  const { fleet, nodes, engine, receiver } = ctx;
  const subs = [];
  for (const n of [nodes.a, nodes.b, nodes.c]) {
    const s = await fleet.open(n, { user: `f${n.name}` });
    await s.subscribe(CHAN);
    s.record(CHAN, 'e');
    subs.push(s);
  }
  const obs = await fleet.open(nodes.a, { user: 'fobs' });
  await obs.subscribe(PRES);
  const joiner = await fleet.open(nodes.c, { user: 'fj' });
  const mark = receiver.mark();
  try {
    await body(ctx, c, { subs, obs, joiner, mark });
  } finally {
    await engine.cli(['CONFIG', 'SET', 'maxmemory', '0']); // never leave Redis full for the next case
  }
}

async function body(ctx, c, { subs, obs, joiner, mark }) {
  const { nodes, engine, receiver } = ctx;
  const set = await engine.cli(['CONFIG', 'SET', 'maxmemory', '1']);
  c.ok(set.ok, 'CONFIG SET maxmemory 1', String(set.reply));
  const probe = await engine.cli(['SET', 'pbt-full-probe', 'x']);
  c.ok(!probe.ok && /OOM/.test(String(probe.reply)), 'Redis refuses writes now', String(probe.reply));
  const fullAt = Date.now();
  const joining = joiner.subscribe(PRES).then(() => Date.now(), (e) => e);
  const pubs = { 'A-full': publish(nodes.a, 'A-full', 30, 100), 'B-full': publish(nodes.b, 'B-full', 15, 200) };
  await sleep(2500);
  const upA = await nodes.a.up();
  c.note(`A's /up while Redis refuses writes: ${upA.status} ${upA.body}`);
  const redisUp = await nodes.a.metric('pushbox_cluster_redis_up');
  c.note(`A's pushbox_cluster_redis_up while Redis refuses writes: ${redisUp}`);
  const res = {};
  for (const [p, pr] of Object.entries(pubs)) res[p] = await pr;
  await engine.cli(['CONFIG', 'SET', 'maxmemory', '0']);
  const freedAt = Date.now();
  c.note(`Redis refused writes for ${freedAt - fullAt} ms`);

  for (const [p, r] of Object.entries(res)) {
    c.ok(r.failed.length === 0, `publisher ${p}: every publish answered 200 while Redis was full`, r.failed.slice(0, 8).join(' '));
  }
  const complete = () => subs.every((s) => Object.entries(res).every(([p, r]) => exactlyOnceInOrder(s, CHAN, 'e', p, r.acked) === ''));
  await within(20000, complete, 200);
  for (const s of subs) {
    for (const [p, r] of Object.entries(res)) {
      const sym = exactlyOnceInOrder(s, CHAN, 'e', p, r.acked);
      c.ok(sym === '', `events of ${p} exactly once and in order on ${s.node.name} after Redis took writes again`, sym);
    }
  }
  const joinedAt = await joining;
  c.ok(typeof joinedAt === 'number', 'the join made while Redis was full completes', String(joinedAt));
  if (typeof joinedAt === 'number') c.note(`join on C completed ${joinedAt - freedAt} ms after Redis took writes again`);
  c.ok(await within(8000, () => obs.members.get(PRES)?.has('fj')), 'A\'s observer lists the late joiner');
  await sleep(1000);
  c.equal(obs.memberLog.get(PRES).filter((e) => e.user === 'fj').map((e) => e.type), ['added'], 'A\'s observer saw one member_added for the late joiner');
  await within(8000, () => receiver.since(mark, (e) => e.user_id === 'fj').length > 0);
  await sleep(500);
  c.equal(receiver.since(mark, (e) => e.user_id === 'fj').map((e) => e.name), ['member_added'], 'one member_added webhook for the late joiner');
}
