// (4) Cut C from Redis only (`ip route add blackhole <redis>/32` inside C's namespace; HTTP from
// the driver still reaches C).
// Short (5 s, under the lease): no webhook at all; events published on A during the cut reach C's
// clients after the heal, in order and complete; events published on C during the cut reach A's
// and B's clients after the heal, in order and complete; no member event for C's user.
// Long (lease + 6 s): one down pair (member_removed for C's only user, channel_vacated for C's only
// channel) during the cut, one up pair (member_added, channel_occupied) after the heal; A's observer
// sees that user leave once and come back once; C's /up says 503 at some point of the cut and 200
// again after it; pushbox_cluster_redis_up is 0 during and 1 after. C's client either gets the
// events published on A during the cut, in order and complete, or is closed with 4200 (resume).
import { within } from '../lib/check.mjs';
import { LEASE_SECS, HEARTBEAT_SECS } from '../lib/procs.mjs';
import { sdkFor, sleep } from '../lib/world.mjs';

const EV = 'part-ev';
const PRES = 'presence-part';
const ONLY_C = 'part-only-c';

/** Publish `n` events named `e` with data {p, i} from `node`, one every `gapMs`; resolves acked ids. */
async function publish(node, p, n, gapMs, from = 0) {
  const sdk = sdkFor(node);
  const acked = [];
  const failed = [];
  for (let i = from; i < from + n; i++) {
    try {
      const r = await sdk.trigger(EV, 'e', { p, i });
      if (r.status === 200) acked.push(i); else failed.push(`${i}:${r.status}`);
    } catch (e) {
      failed.push(`${i}:${e.status || e.message}`);
    }
    await sleep(gapMs);
  }
  return { acked, failed };
}

/** Every acked id of publisher `p` received once, in order, by `sock`? Returns a symptom or ''. */
export function exactlyOnceInOrder(sock, chan, event, p, acked) {
  const got = sock.got(chan, event).filter((d) => d.p === p).map((d) => d.i);
  const seen = new Set();
  const dups = got.filter((i) => (seen.has(i) ? true : (seen.add(i), false)));
  const missing = acked.filter((i) => !seen.has(i));
  const outOfOrder = got.some((v, k) => k > 0 && v < got[k - 1]);
  const parts = [];
  if (missing.length) parts.push(`missing ${missing.length} (${missing.slice(0, 8)})`);
  if (dups.length) parts.push(`duplicates ${dups.slice(0, 8)}`);
  if (outOfOrder) parts.push(`out of order: ${got.slice(0, 30)}`);
  return parts.join('; ');
}

export async function partition(ctx, c) {
  const { fleet, nodes, receiver } = ctx;
  const sa = await fleet.open(nodes.a, { user: 'pa' });
  const sb = await fleet.open(nodes.b, { user: 'pb' });
  const sc = await fleet.open(nodes.c, { user: 'pc' });
  for (const s of [sa, sb, sc]) { await s.subscribe(EV); s.record(EV, 'e'); }
  await sa.subscribe(PRES);
  await sc.subscribe(PRES);
  await sc.subscribe(ONLY_C);
  const closes = [];
  const states = [];
  sc.pusher.connection.bind('error', (e) => closes.push(e?.error?.data?.code ?? e?.data?.code ?? 'error'));
  sc.pusher.connection.bind('state_change', ({ current }) => states.push(current));
  await within(8000, () => sa.members.get(PRES)?.has('pc')
    && receiver.events.some((e) => e.name === 'channel_occupied' && e.channel === ONLY_C));
  await sleep(500);

  // --- short: 5 s ---
  let mark = receiver.mark();
  const logA = sa.memberLog.get(PRES).length;
  await nodes.c.blackhole();
  const cutAt = Date.now();
  const [fromA, fromC] = await Promise.all([publish(nodes.a, 'A', 30, 100), publish(nodes.c, 'C', 10, 300)]);
  await sleep(Math.max(0, 5000 - (Date.now() - cutAt)));
  await nodes.c.heal();
  c.ok(fromA.failed.length === 0, 'A accepts every event during the short cut', fromA.failed.join(' '));
  c.ok(fromC.failed.length === 0, 'C (cut off) still accepts events: the local spool answers', fromC.failed.join(' '));
  const completeA = () => [sa, sb, sc].every((s) => exactlyOnceInOrder(s, EV, 'e', 'A', fromA.acked) === '');
  const completeC = () => [sa, sb, sc].every((s) => exactlyOnceInOrder(s, EV, 'e', 'C', fromC.acked) === '');
  await within(15000, () => completeA() && completeC());
  for (const s of [sa, sb, sc]) {
    const a = exactlyOnceInOrder(s, EV, 'e', 'A', fromA.acked);
    c.ok(a === '', `short cut: events published on A, as received on ${s.node.name}`, a);
    const cc = exactlyOnceInOrder(s, EV, 'e', 'C', fromC.acked);
    c.ok(cc === '', `short cut: events published on C, as received on ${s.node.name}`, cc);
  }
  // Stay past the lease from the cut: a reap would show here.
  await sleep(Math.max(0, (LEASE_SECS + 2 * HEARTBEAT_SECS + 4) * 1000 - (Date.now() - cutAt)));
  const shortHooks = receiver.since(mark);
  c.ok(shortHooks.length === 0, 'short cut: no webhook at all', JSON.stringify(shortHooks));
  const pcEvents = sa.memberLog.get(PRES).slice(logA);
  c.ok(pcEvents.length === 0, 'short cut: the observer on A sees no member event', JSON.stringify(pcEvents));
  c.ok(!states.includes('connecting'), 'short cut: C\'s client stays connected', `states ${states}`);

  // --- long: lease + 6 s ---
  mark = receiver.mark();
  const logA2 = sa.memberLog.get(PRES).length;
  const baseA = sc.got(EV, 'e').length;
  states.length = 0;
  await nodes.c.blackhole();
  const cut2 = Date.now();
  let saw503 = null;
  let sawRedisDown = false;
  const longMs = (LEASE_SECS + 6) * 1000;
  const pub = publish(nodes.a, 'A2', 40, Math.floor(longMs / 45));
  while (Date.now() - cut2 < longMs) {
    const up = await nodes.c.up();
    if (up.status === 503 && !saw503) saw503 = `${up.body} after ${Date.now() - cut2} ms`;
    if ((await nodes.c.metric('pushbox_cluster_redis_up')) === 0) sawRedisDown = true;
    await sleep(500);
  }
  const fromA2 = await pub;
  const removedHooks = receiver.since(mark);
  await nodes.c.heal();
  const healedAt = Date.now();
  c.ok(!!saw503, 'long cut: C\'s /up answers 503 while it has lost Redis', saw503 || 'always 200');
  if (saw503) c.note(`C /up: ${saw503}`);
  c.ok(sawRedisDown, 'long cut: C\'s pushbox_cluster_redis_up is 0 while cut off');
  const upAgain = await within(20000, async () => (await nodes.c.up()).status === 200);
  c.ok(upAgain, 'long cut: C\'s /up is 200 again after the heal', `still ${(await nodes.c.up()).body}`);
  if (upAgain) c.note(`C /up 200 again ${Date.now() - healedAt} ms after the heal`);
  c.ok(await within(10000, async () => (await nodes.c.metric('pushbox_cluster_redis_up')) === 1),
    'long cut: pushbox_cluster_redis_up is 1 again after the heal');

  const down = (x) => (x.name === 'member_removed' && x.channel === PRES && x.user_id === 'pc') || (x.name === 'channel_vacated' && x.channel === ONLY_C);
  const upP = (x) => (x.name === 'member_added' && x.channel === PRES && x.user_id === 'pc') || (x.name === 'channel_occupied' && x.channel === ONLY_C);
  c.equal(removedHooks.filter(down).map((x) => x.name).sort(), ['channel_vacated', 'member_removed'], 'long cut: one down pair during the cut');
  await within(15000, () => receiver.since(mark).filter(upP).length >= 2);
  await sleep(1500);
  const all = receiver.since(mark);
  c.equal(all.filter(upP).map((x) => x.name).sort(), ['channel_occupied', 'member_added'], 'long cut: one up pair after the heal');
  const other = all.filter((x) => !down(x) && !upP(x));
  c.ok(other.length === 0, 'long cut: no other webhook', JSON.stringify(other));
  c.equal(sa.memberLog.get(PRES).slice(logA2).map((e) => `${e.type} ${e.user}`), ['removed pc', 'added pc'],
    'long cut: the observer on A sees pc leave once and come back once');

  c.ok(fromA2.failed.length === 0, 'A accepts every event during the long cut', fromA2.failed.join(' '));
  await within(15000, () => exactlyOnceInOrder(sc, EV, 'e', 'A2', fromA2.acked) === '' || states.includes('connecting'));
  const symptom = exactlyOnceInOrder(sc, EV, 'e', 'A2', fromA2.acked);
  if (states.includes('connecting')) {
    c.note(`long cut: C's client was disconnected (states ${states}, pusher:error codes ${closes}) and must resume; received ${sc.got(EV, 'e').length - baseA} of ${fromA2.acked.length}`);
    c.ok(closes.includes(4200), 'long cut: if C closes its clients, it says 4200 first', `codes ${closes}, states ${states}`);
  } else {
    c.ok(symptom === '', 'long cut: events published on A reach C\'s client after the heal, in order, complete', symptom);
  }
  for (const s of [sa, sb]) {
    const sym = exactlyOnceInOrder(s, EV, 'e', 'A2', fromA2.acked);
    c.ok(sym === '', `long cut: events published on A, as received on ${s.node.name}`, sym);
  }
}
