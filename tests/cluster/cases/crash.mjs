// (3) kill -9 node C. C holds u2 only (two sockets) and one socket of u3 (u3 also on A), and is
// the only node on channel crash-only-c. Within lease + janitor (+ slack): observers on A and B
// each see exactly one member_removed for u2 and none for u3, the same member events on both;
// webhooks: one member_removed u2, none for u3, one channel_vacated for crash-only-c, none for
// presence-crash (still occupied). Identical duplicate webhooks are allowed here only (a kill
// between enqueue and ack) and reported. Then C comes back on its state directory and agrees.
import { within } from '../lib/check.mjs';
import { LEASE_SECS, HEARTBEAT_SECS } from '../lib/procs.mjs';
import { sleep } from '../lib/world.mjs';
import { httpAgrees } from './presence.mjs';

const CHAN = 'presence-crash';
const ONLY_C = 'crash-only-c';

export async function crash(ctx, c) {
  const { fleet, nodes, receiver } = ctx;
  const obsA = await fleet.open(nodes.a, { user: 'oa' });
  const obsB = await fleet.open(nodes.b, { user: 'ob' });
  await obsA.subscribe(CHAN);
  await obsB.subscribe(CHAN);
  const u3a = await fleet.open(nodes.a, { user: 'u3' });
  await u3a.subscribe(CHAN);
  const onC = [];
  for (const user of ['u2', 'u2', 'u3']) {
    const s = await fleet.open(nodes.c, { user });
    await s.subscribe(CHAN);
    onC.push(s);
  }
  await onC[0].subscribe(ONLY_C);
  const ready = await within(8000, () => ['oa', 'ob', 'u2', 'u3'].every((u) => obsA.members.get(CHAN)?.has(u) && obsB.members.get(CHAN)?.has(u)));
  c.ok(ready, 'observers on A and B list oa, ob, u2, u3 before the kill',
    `A ${JSON.stringify([...(obsA.members.get(CHAN) || [])])} B ${JSON.stringify([...(obsB.members.get(CHAN) || [])])}`);
  // Let the join webhooks land before the mark.
  await within(8000, () => receiver.events.some((e) => e.name === 'channel_occupied' && e.channel === ONLY_C));
  await sleep(500);
  const mark = receiver.mark();
  const logA = obsA.memberLog.get(CHAN).length;
  const logB = obsB.memberLog.get(CHAN).length;

  c.equal(await nodes.a.metric('pushbox_cluster_nodes'), 3, 'pushbox_cluster_nodes on A before the kill');
  const killedAt = Date.now();
  await nodes.c.kill9();
  for (const s of onC) s.abandon();
  const bound = (LEASE_SECS + 3 * HEARTBEAT_SECS + 5) * 1000; // lease + janitor + slack
  const removed = await within(bound, () => obsA.members.get(CHAN)?.has('u2') === false && obsB.members.get(CHAN)?.has('u2') === false);
  c.ok(removed, `observers on A and B see u2 leave within ${bound / 1000} s of the kill`);
  if (removed) c.note(`member_removed u2 seen ${Date.now() - killedAt} ms after kill -9 (lease ${LEASE_SECS} s)`);
  // Webhooks: member_removed and vacated come 3 s after the reap.
  await within(8000, () => receiver.since(mark).some((e) => e.name === 'channel_vacated' && e.channel === ONLY_C));
  await sleep(2000);

  const evA = obsA.memberLog.get(CHAN).slice(logA).map((e) => `${e.type} ${e.user}`);
  const evB = obsB.memberLog.get(CHAN).slice(logB).map((e) => `${e.type} ${e.user}`);
  c.equal(evA, ['removed u2'], 'member events on A after the kill');
  c.equal(evB, evA, 'observers on A and B saw the same member events');
  const hooks = receiver.since(mark);
  receiver.dupOk.push([mark, receiver.mark()]);
  const distinct = (arr) => new Set(arr.map((e) => `${e.name}|${e.channel}|${e.user_id || ''}`));
  const rem2 = hooks.filter((e) => e.name === 'member_removed' && e.channel === CHAN && e.user_id === 'u2');
  const rem3 = hooks.filter((e) => e.name === 'member_removed' && e.user_id === 'u3');
  const vacC = hooks.filter((e) => e.name === 'channel_vacated' && e.channel === ONLY_C);
  const vacP = hooks.filter((e) => e.name === 'channel_vacated' && e.channel === CHAN);
  c.ok(rem2.length >= 1 && distinct(rem2).size === 1, 'one member_removed webhook for u2', JSON.stringify(rem2));
  c.equal(rem3.length, 0, 'no member_removed webhook for u3 (still on A)');
  c.ok(vacC.length >= 1 && distinct(vacC).size === 1, `one channel_vacated webhook for ${ONLY_C}`, JSON.stringify(vacC));
  c.equal(vacP.length, 0, `no channel_vacated for ${CHAN} (occupied on A and B)`);
  const dups = rem2.length - 1 + Math.max(0, vacC.length - 1);
  if (dups > 0) c.note(`${dups} identical duplicate webhook(s) after the kill (allowed: kill between enqueue and ack)`);
  const others = hooks.filter((e) => !rem2.includes(e) && !vacC.includes(e));
  c.ok(others.length === 0, 'no other webhook after the kill', JSON.stringify(others));
  await httpAgrees({ ...ctx, nodes: { list: [nodes.a, nodes.b] } }, CHAN, c, 'after the reap (A, B)');

  c.ok(await within(5000, async () => (await nodes.a.metric('pushbox_cluster_nodes')) === 2),
    'pushbox_cluster_nodes on A after the reap', `${await nodes.a.metric('pushbox_cluster_nodes')}`);

  // C comes back as a new incarnation on the same state directory.
  await nodes.c.start();
  await sleep(1000);
  c.ok(await within(5000, async () => (await nodes.b.metric('pushbox_cluster_nodes')) === 3),
    'pushbox_cluster_nodes on B after C restarted', `${await nodes.b.metric('pushbox_cluster_nodes')}`);
  await httpAgrees(ctx, CHAN, c, 'after C restarted');
}
