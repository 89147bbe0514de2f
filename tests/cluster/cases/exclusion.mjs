// (6) socket_id exclusion across nodes. An API event sent to A with the socket_id of a client on B
// reaches everyone but that client; the same from C excluding a client on A. A client event sent
// on B over a private channel reaches A and C and not its sender.
import { within } from '../lib/check.mjs';
import { sdkFor, sleep } from '../lib/world.mjs';

export async function exclusion(ctx, c) {
  const { fleet, nodes } = ctx;
  const chan = 'excl';
  const socks = {};
  for (const [name, n] of [['a', nodes.a], ['b', nodes.b], ['c', nodes.c]]) {
    const s = await fleet.open(n, { user: `x${name}` });
    await s.subscribe(chan);
    s.record(chan, 'e');
    await s.subscribe('private-excl');
    s.record('private-excl', 'client-hi');
    socks[name] = s;
  }
  const cases = [
    { via: nodes.a, except: socks.b, tag: 'A-excludes-B' },
    { via: nodes.c, except: socks.a, tag: 'C-excludes-A' },
  ];
  for (const k of cases) {
    await sdkFor(k.via).trigger(chan, 'e', { tag: k.tag }, { socket_id: k.except.socketId });
    const others = Object.values(socks).filter((s) => s !== k.except);
    const ok = await within(8000, () => others.every((s) => s.got(chan, 'e').some((d) => d.tag === k.tag)));
    c.ok(ok, `${k.tag}: every other client gets the event`,
      others.map((s) => `${s.node.name}:${s.got(chan, 'e').length}`).join(' '));
    await sleep(500);
    const leaked = k.except.got(chan, 'e').filter((d) => d.tag === k.tag);
    c.ok(leaked.length === 0, `${k.tag}: the excluded client (on ${k.except.node.name}) does not get it`, JSON.stringify(leaked));
  }
  // Client event from B: not echoed to the sender, delivered on the other nodes.
  const ch = socks.b.pusher.channel('private-excl');
  c.ok(ch.trigger('client-hi', { from: 'b' }), 'pusher-js sent the client event');
  const ok = await within(8000, () => [socks.a, socks.c].every((s) => s.got('private-excl', 'client-hi').length === 1));
  c.ok(ok, 'a client event from B reaches A and C', [socks.a, socks.c].map((s) => s.got('private-excl', 'client-hi').length).join(' '));
  await sleep(500);
  c.equal(socks.b.got('private-excl', 'client-hi').length, 0, 'the sender on B does not get its own client event');
}
