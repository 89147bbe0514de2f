// (1) Presence per observer against ground truth. Users u1..u5 hold 1-3 sockets each spread over
// A/B/C and join and leave presence-x in seeded random steps (at most one change per user per
// step, so each step's transitions are known). After each step, once quiet:
//   - every subscribed socket's replayed member set equals the truth;
//   - a socket subscribed through the whole step saw exactly one member_added for a user who went
//     0 -> 1 connections, exactly one member_removed for 1 -> 0, and nothing for anyone else
//     (no duplicate added, no premature removed; the replay also flags added-when-listed and
//     removed-when-absent on every socket);
//   - GET /channels/presence-x/users, user_count and subscription_count are identical on A, B
//     and C and equal the truth.
import { within, rng } from '../lib/check.mjs';
import { apiGet, sleep } from '../lib/world.mjs';

export const CHAN = 'presence-x';
const USERS = ['u1', 'u2', 'u3', 'u4', 'u5'];

/** Compare what every node's HTTP API says about a presence channel with the truth. */
export async function httpAgrees(ctx, chan, c, label) {
  const { world, nodes } = ctx;
  const want = world.users(chan);
  const subs = world.subscriptions(chan);
  const seen = [];
  for (const n of nodes.list) {
    const u = await apiGet(n, `/channels/${chan}/users`);
    const i = await apiGet(n, `/channels/${chan}`, { info: 'user_count,subscription_count' });
    const ids = u.json?.users ? u.json.users.map((x) => String(x.id)).sort() : `HTTP ${u.status} ${u.error || ''}`;
    seen.push({ node: n.name, ids, user_count: i.json?.user_count, subscription_count: i.json?.subscription_count, occupied: i.json?.occupied });
  }
  let good = true;
  for (const s of seen) {
    good = c.ok(JSON.stringify(s.ids) === JSON.stringify(want), `${label}: GET /channels/${chan}/users on ${s.node}`, `got ${JSON.stringify(s.ids)}, truth ${JSON.stringify(want)}`) && good;
    if (want.length > 0) {
      good = c.ok(s.user_count === want.length, `${label}: user_count on ${s.node}`, `got ${s.user_count}, truth ${want.length}`) && good;
      good = c.ok(s.subscription_count === subs, `${label}: subscription_count on ${s.node}`, `got ${s.subscription_count}, truth ${subs}`) && good;
    } else {
      good = c.ok(s.occupied === false || s.user_count === 0, `${label}: empty channel on ${s.node}`, `got ${JSON.stringify(s)}`) && good;
    }
  }
  return good;
}

/** Every socket subscribed to `chan` lists exactly the truth. */
export function viewsAgree(ctx, chan, socks) {
  const want = JSON.stringify(ctx.world.users(chan));
  return socks.every((s) => s.channels.has(chan) && JSON.stringify([...(s.members.get(chan) || [])].sort()) === want);
}

export async function presence(ctx, c) {
  const { fleet, nodes, world } = ctx;
  const rand = rng(ctx.seed);
  const pick = (arr) => arr[Math.floor(rand() * arr.length)];
  const steps = Number(process.env.PRESENCE_STEPS || 30);
  const nodeList = [nodes.a, nodes.b, nodes.c];
  const live = new Map(USERS.map((u) => [u, []])); // user -> [Sock subscribed]

  const join = async (u) => {
    const s = await fleet.open(pick(nodeList), { user: u });
    await s.subscribe(CHAN);
    live.get(u).push(s);
  };
  const leave = (u) => {
    const arr = live.get(u);
    const s = arr.splice(Math.floor(rand() * arr.length), 1)[0];
    // Half by unsubscribe on a live connection, half by closing the connection.
    if (rand() < 0.5) { s.unsubscribe(CHAN); setTimeout(() => s.disconnect(), 300); } else s.disconnect();
  };

  // Start: every user with 1-2 sockets, joined one after another.
  for (const u of USERS) {
    const n = 1 + Math.floor(rand() * 2);
    for (let i = 0; i < n; i++) await join(u);
  }
  const allLive = () => [...live.values()].flat();
  c.ok(await within(8000, () => viewsAgree(ctx, CHAN, allLive())), 'initial member sets equal the truth',
    describeViews(ctx, allLive()));

  let httpBad = 0;
  for (let step = 1; step <= steps; step++) {
    const before = new Map(USERS.map((u) => [u, world.count(CHAN, u)]));
    const continuing = allLive();
    const logMark = new Map(continuing.map((s) => [s, s.memberLog.get(CHAN).length]));
    // 1-3 users change this step, at most one socket each, concurrently across nodes.
    const movers = USERS.filter(() => rand() < 0.5).slice(0, 3);
    if (movers.length === 0) movers.push(pick(USERS));
    const ops = [];
    for (const u of movers) {
      const n = live.get(u).length;
      const doJoin = n === 0 || (n < 3 && rand() < 0.5);
      if (doJoin) ops.push(join(u));
      else leave(u);
    }
    await Promise.all(ops);
    const stayed = continuing.filter((s) => !s.closed && s.channels.has(CHAN));
    const expectEvents = (s) => {
      const want = [];
      for (const u of USERS) {
        const b = before.get(u);
        const a = world.count(CHAN, u);
        if (b === 0 && a > 0) want.push(`added ${u}`);
        if (b > 0 && a === 0) want.push(`removed ${u}`);
      }
      return want.sort();
    };
    const gotEvents = (s) => s.memberLog.get(CHAN).slice(logMark.get(s)).filter((e) => e.type !== 'snapshot')
      .map((e) => `${e.type} ${e.user}`).sort();
    const quiet = await within(8000, () => viewsAgree(ctx, CHAN, allLive())
      && stayed.every((s) => JSON.stringify(gotEvents(s)) === JSON.stringify(expectEvents(s))));
    await sleep(250); // a duplicate or a late removal would land here
    const want = expectEvents();
    for (const s of stayed) {
      const got = gotEvents(s);
      c.ok(JSON.stringify(got) === JSON.stringify(want), `step ${step}: member events seen by ${s.label}`,
        `got [${got}], truth [${want}]`);
    }
    c.ok(quiet && viewsAgree(ctx, CHAN, allLive()), `step ${step}: every observer's member set equals the truth`,
      describeViews(ctx, allLive()));
    if (!(await httpAgrees(ctx, CHAN, c, `step ${step}`))) httpBad++;
    if (c.failures.length > 12) { c.note(`stopped after step ${step}: too many failures`); break; }
  }
  await simultaneous(ctx, c, allLive());
  for (const s of fleet.all) for (const v of s.violations) c.fail(`replay: ${v}`);
  c.note(`${steps} steps, seed ${ctx.seed}; HTTP disagreed in ${httpBad} step(s)`);
}

/**
 * The race a per-node lock loses: one user's first sockets join on A, B and C at the same moment
 * (then all leave at the same moment), 5 rounds. Every observer must see one member_added and one
 * member_removed per round, and the webhooks one member_added and one member_removed per round.
 */
async function simultaneous(ctx, c, observers) {
  const { fleet, nodes, receiver } = ctx;
  const rounds = 5;
  const mark = receiver.mark();
  const logMark = new Map(observers.map((s) => [s, s.memberLog.get(CHAN).length]));
  for (let r = 0; r < rounds; r++) {
    const socks = await Promise.all([nodes.a, nodes.b, nodes.c].map((n) => fleet.open(n, { user: 'racer' })));
    await Promise.all(socks.map((s) => s.subscribe(CHAN)));
    await within(5000, () => observers.every((o) => o.members.get(CHAN)?.has('racer')));
    for (const s of socks) s.disconnect();
    await within(5000, () => observers.every((o) => !o.members.get(CHAN)?.has('racer')));
    await sleep(3500); // past the webhook delay, so each round's leave is a real one
  }
  await sleep(500);
  for (const o of observers) {
    const got = o.memberLog.get(CHAN).slice(logMark.get(o)).filter((e) => e.user === 'racer').map((e) => e.type);
    const want = Array.from({ length: rounds }, () => ['added', 'removed']).flat();
    c.equal(got, want, `simultaneous joins and leaves of one user on A, B, C: events seen by ${o.label}`);
  }
  const hooks = receiver.since(mark, (e) => e.user_id === 'racer').map((e) => e.name);
  c.equal(hooks, Array.from({ length: rounds }, () => ['member_added', 'member_removed']).flat(),
    'simultaneous joins and leaves of one user on A, B, C: webhooks');
}

function describeViews(ctx, socks) {
  const want = ctx.world.users(CHAN);
  const bad = socks.filter((s) => JSON.stringify([...(s.members.get(CHAN) || [])].sort()) !== JSON.stringify(want));
  return `truth ${JSON.stringify(want)}; differing: ${bad.slice(0, 4).map((s) => `${s.label}=${JSON.stringify([...(s.members.get(CHAN) || [])].sort())}`).join(', ') || 'none'}`;
}
