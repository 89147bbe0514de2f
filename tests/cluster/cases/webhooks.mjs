// (2) Webhooks, once cluster-wide. Over everything received so far (the presence steps included):
// every request verifies (X-Pusher-Key, X-Pusher-Signature); per channel occupied/vacated strictly
// alternate and per (channel, user) added/removed do, and the last of each equals the truth. Then:
// a quick reconnect (leave on A, rejoin on B within 1 s) sends neither vacated/occupied nor
// removed/added; a real leave sends vacated and member_removed once each, not before ~3 s
// (Pusher's delay; 2.5 s allowed for clock granularity).
import { within } from '../lib/check.mjs';
import { alternation, ordered } from '../lib/webhooks.mjs';
import { sleep } from '../lib/world.mjs';

const DELAY_FLOOR_MS = 2500;

/** Alternation and end state over events[from..]; `world` gives the truth for the end state. */
/** `world` null: no end-state check (the segment ends mid-run). */
export function checkAlternation(c, receiver, world, from, label, knownStart = true, to = receiver.events.length) {
  const evs = ordered(receiver.events.slice(from, to));
  const dupOk = (i) => (receiver.dupOk || []).some(([a, b]) => i >= a && i < b);
  const { violations, last, duplicates } = alternation(evs, knownStart, dupOk);
  c.ok(violations.length === 0, `${label}: webhooks alternate per channel and per (channel, user)`, violations.slice(0, 6).join('; '));
  if (duplicates) c.note(`${label}: ${duplicates} identical repeat(s) in the node-crash window (allowed)`);
  if (!world) return;
  const wrong = [];
  for (const [key, up] of last) {
    const [kind, chan, user] = key.split('|');
    const truth = kind === 'c' ? world.occupied(chan) : world.count(chan, user) > 0;
    if (truth !== up) wrong.push(`${key} last webhook says ${up ? 'up' : 'down'}, truth ${truth ? 'up' : 'down'}`);
  }
  c.ok(wrong.length === 0, `${label}: the last webhook of each channel and member equals the truth`, wrong.slice(0, 6).join('; '));
}

export async function webhooks(ctx, c) {
  const { fleet, nodes, receiver, world } = ctx;
  // Let every delayed vacated/removed of the previous case arrive (3 s delay + batching).
  await sleep(4500);
  c.ok(receiver.requests > 0, 'the receiver got webhook requests', `${receiver.requests} requests`);
  c.ok(receiver.invalid.length === 0, 'every webhook request verifies (key and signature)', receiver.invalid.slice(0, 3).join('; '));
  checkAlternation(c, receiver, world, ctx.hooksFrom, 'whole run so far');

  // Quick reconnect across nodes: neither a down nor an up.
  const chan = 'presence-wq';
  const s1 = await fleet.open(nodes.a, { user: 'w1' });
  await s1.subscribe(chan);
  const got = (pred) => receiver.events.some(pred);
  c.ok(await within(8000, () => got((e) => e.name === 'channel_occupied' && e.channel === chan)
    && got((e) => e.name === 'member_added' && e.channel === chan && e.user_id === 'w1')),
  'channel_occupied and member_added for a first join', JSON.stringify(receiver.events.filter((e) => e.channel === chan)));
  const mark = receiver.mark();
  const t0 = Date.now();
  s1.disconnect();
  await sleep(700); // a page reload: the old socket is gone for a while before the new one joins
  const s2 = await fleet.open(nodes.b, { user: 'w1' });
  await s2.subscribe(chan);
  c.note(`rejoined on B ${Date.now() - t0} ms after the leave on A`);
  await sleep(5000);
  const flap = receiver.since(mark, (e) => e.channel === chan);
  c.ok(flap.length === 0, 'a reconnect within 1 s sends no webhook (no vacated/occupied, no removed/added)',
    JSON.stringify(flap));

  // A real leave: one vacated and one member_removed, after the delay.
  const mark2 = receiver.mark();
  const left = Date.now();
  s2.disconnect();
  const down = await within(12000, () => {
    const e = receiver.since(mark2, (x) => x.channel === chan);
    return e.some((x) => x.name === 'channel_vacated') && e.some((x) => x.name === 'member_removed') ? e : false;
  });
  await sleep(1000);
  const after = receiver.since(mark2, (x) => x.channel === chan);
  c.ok(!!down, 'channel_vacated and member_removed after the last socket leaves', JSON.stringify(after));
  const vac = after.filter((x) => x.name === 'channel_vacated');
  const rem = after.filter((x) => x.name === 'member_removed');
  c.equal([vac.length, rem.length], [1, 1], 'exactly one channel_vacated and one member_removed');
  for (const e of [...vac, ...rem]) {
    c.ok(e.at - left >= DELAY_FLOOR_MS, `${e.name} waits Pusher's delay`, `arrived ${e.at - left} ms after the leave`);
  }
}
