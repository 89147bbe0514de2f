// (7) terminate_connections on A closes user U's sockets on B and C (pusher-js sees 4009 and stays
// disconnected); a bystander on B stays connected. sendToUser on A reaches the user's sockets on
// B and C.
import { within } from '../lib/check.mjs';
import { sdkFor, sleep, waitUntil } from '../lib/world.mjs';

async function signedIn(fleet, node, user) {
  const s = await fleet.open(node, { user });
  s.pusher.signin();
  await waitUntil(() => s.pusher.user.user_data && s.pusher.user.serverToUserChannel?.subscribed,
    { timeout: 8000, what: `signin of ${user} on ${node.name}` });
  return s;
}

export async function terminate(ctx, c) {
  const { fleet, nodes } = ctx;
  const u1 = await signedIn(fleet, nodes.b, 'tu');
  const u2 = await signedIn(fleet, nodes.c, 'tu');
  const by = await signedIn(fleet, nodes.b, 'bystander');

  // sendToUser from A reaches both of U's sockets.
  const got = [u1, u2].map((s) => { const a = []; s.pusher.user.bind('ping-user', (d) => a.push(d)); return a; });
  await sdkFor(nodes.a).sendToUser('tu', 'ping-user', { n: 1 });
  c.ok(await within(8000, () => got.every((a) => a.length === 1)), 'sendToUser on A reaches U on B and C',
    got.map((a) => a.length).join(' '));

  const codes = [];
  for (const s of [u1, u2]) s.pusher.connection.bind('error', (e) => codes.push(e?.error?.data?.code ?? e?.data?.code));
  const r = await sdkFor(nodes.a).terminateUserConnections('tu');
  c.equal(r.status, 200, 'terminate_connections on A answers 200');
  const closed = await within(8000, () => u1.state === 'disconnected' && u2.state === 'disconnected');
  c.ok(closed, 'U\'s sockets on B and C are closed', `states ${u1.state}/${u2.state}`);
  c.ok(codes.includes(4009), 'pusher-js got 4009', `codes ${JSON.stringify(codes)}`);
  await sleep(1500);
  c.ok(u1.state === 'disconnected' && u2.state === 'disconnected', 'U stays disconnected (4009: no reconnect)', `${u1.state}/${u2.state}`);
  c.equal(by.state, 'connected', 'the bystander on B stays connected');
  for (const s of [u1, u2]) s.disconnect();
}
