// Presence channels through Laravel Echo's join()/here()/joining()/leaving() and pusher-js.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../lib/server.mjs';
import {
  Clients, startAuthServer, makeSdk, subscribe, waitEvent, collect, sleep, waitUntil,
} from '../lib/helpers.mjs';

let server, auth, clients, sdk;

before(async () => {
  server = await startServer();
  auth = await startAuthServer(server);
  clients = new Clients(server, auth);
  sdk = makeSdk(server);
});
after(async () => { await clients?.closeAll(); await auth?.close(); await server?.stop(); });
afterEach(async () => { await clients.closeAll(); });

/** Echo join() with here/joining/leaving recorders. */
function join(echo, room) {
  const rec = { here: null, joining: [], leaving: [] };
  echo.join(room)
    .here((users) => { rec.here = users; })
    .joining((u) => rec.joining.push(u))
    .leaving((u) => rec.leaving.push(u));
  return rec;
}

describe('presence via Laravel Echo', () => {
  it('here / joining / leaving', async () => {
    const alice = await clients.echo({ user: '1', name: 'Alice' });
    const a = join(alice, 'chat.1');
    await waitUntil(() => a.here, { what: "Alice's here()" });
    assert.deepEqual(a.here, [{ name: 'Alice' }]);

    const bob = await clients.echo({ user: '2', name: 'Bob' });
    const b = join(bob, 'chat.1');
    await waitUntil(() => b.here, { what: "Bob's here()" });
    assert.deepEqual([...b.here].sort((x, y) => x.name.localeCompare(y.name)), [{ name: 'Alice' }, { name: 'Bob' }]);
    await waitUntil(() => a.joining.length === 1, { what: 'Alice sees Bob joining' });
    assert.deepEqual(a.joining, [{ name: 'Bob' }]);
    assert.equal(b.joining.length, 0, 'member_added is not sent to the joiner itself');

    bob.leave('chat.1');
    await waitUntil(() => a.leaving.length === 1, { what: 'Alice sees Bob leaving' });
    assert.deepEqual(a.leaving, [{ name: 'Bob' }]);
  });

  it('disconnecting counts as leaving', async () => {
    const alice = await clients.echo({ user: '1', name: 'Alice' });
    const a = join(alice, 'chat.2');
    await waitUntil(() => a.here, { what: 'here' });
    const bob = await clients.echo({ user: '2', name: 'Bob' });
    const b = join(bob, 'chat.2');
    await waitUntil(() => b.here && a.joining.length === 1, { what: 'join' });
    bob.disconnect();
    await waitUntil(() => a.leaving.length === 1, { what: 'leaving after disconnect' });
  });
});

describe('presence membership is per user, not per connection', () => {
  it('two connections of the same user: one member; member_removed only when the last leaves', async () => {
    const watcher = await clients.pusher({ user: '9', name: 'Watcher' });
    const wch = await subscribe(watcher, 'presence-room.1');
    const added = collect(wch, 'pusher:member_added');
    const removed = collect(wch, 'pusher:member_removed');

    const tab1 = await clients.pusher({ user: '5', name: 'Eve' });
    await subscribe(tab1, 'presence-room.1');
    const tab2 = await clients.pusher({ user: '5', name: 'Eve' });
    const ch2 = await subscribe(tab2, 'presence-room.1');

    await waitUntil(() => added.length >= 1, { what: 'member_added for Eve' });
    await sleep(300);
    assert.equal(added.length, 1, 'second connection of the same user must not add a member');
    assert.deepEqual(added[0].data, { id: '5', info: { name: 'Eve' } });
    assert.equal(ch2.members.count, 2, 'Eve + Watcher');
    assert.deepEqual(Object.keys(ch2.members.members).sort(), ['5', '9']);

    const users = await (await sdk.get({ path: '/channels/presence-room.1/users' })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['5', '9']);

    tab1.unsubscribe('presence-room.1');
    await sleep(400);
    assert.equal(removed.length, 0, 'Eve still has a connection in the room');
    tab2.disconnect();
    await waitUntil(() => removed.length === 1, { what: 'member_removed after last connection left' });
    assert.equal(removed[0].data.id, '5');
  });

  it('raw subscription_succeeded payload: string data with ids/hash/count', async () => {
    const p = await clients.pusher({ user: '3', name: 'Cy' });
    await subscribe(p, 'presence-raw.1');
    const r = await clients.raw();
    await r.established();
    const channelData = JSON.stringify({ user_id: '4', user_info: { name: 'Di' } });
    const a = sdk.authorizeChannel(r.socketId, 'presence-raw.1', { user_id: '4', user_info: { name: 'Di' } });
    assert.equal(a.channel_data, channelData);
    r.send({ event: 'pusher:subscribe', data: { channel: 'presence-raw.1', auth: a.auth, channel_data: a.channel_data } });
    const ok = await r.event('pusher_internal:subscription_succeeded');
    assert.equal(typeof ok.data, 'string');
    const { presence } = JSON.parse(ok.data);
    assert.equal(presence.count, 2);
    assert.deepEqual([...presence.ids].sort(), ['3', '4']);
    assert.deepEqual(presence.hash, { 3: { name: 'Cy' }, 4: { name: 'Di' } });
  });

  it('numeric user_id in channel_data is normalised to a string', async () => {
    const r = await clients.raw();
    await r.established();
    const cd = { user_id: 42, user_info: { n: 1 } };
    const a = sdk.authorizeChannel(r.socketId, 'presence-num', cd);
    r.send({ event: 'pusher:subscribe', data: { channel: 'presence-num', auth: a.auth, channel_data: a.channel_data } });
    const ok = await r.event('pusher_internal:subscription_succeeded');
    const { presence } = JSON.parse(ok.data);
    assert.deepEqual(presence.ids, ['42']);
  });

  it('presence subscribe without channel_data (not signed in) is refused', async () => {
    const r = await clients.raw();
    await r.established();
    const a = sdk.authorizeChannel(r.socketId, 'presence-nodata');
    r.send({ event: 'pusher:subscribe', data: { channel: 'presence-nodata', auth: a.auth } });
    const reply = await r.next((f) => f.event === 'pusher:subscription_error' || f.event === 'pusher:error' || f.event === 'pusher_internal:subscription_succeeded');
    assert.notEqual(reply.event, 'pusher_internal:subscription_succeeded');
  });
});

describe('presence member limit', () => {
  // App "counted" has max_presence_members = 2.
  it('a third distinct user gets pusher:subscription_error; existing users are unaffected', async () => {
    // This test needs an auth endpoint signing with the counted app's secret.
    const countedAuth = await startAuthServer(server, 'counted');
    const c = new Clients(server, countedAuth);
    try {
      const a = await c.pusher({ app: 'counted', user: '1' });
      const b = await c.pusher({ app: 'counted', user: '2' });
      const third = await c.pusher({ app: 'counted', user: '3' });
      const again = await c.pusher({ app: 'counted', user: '1' }); // same user again: not a new member
      await subscribe(a, 'presence-limited');
      await subscribe(b, 'presence-limited');
      const ch3 = third.subscribe('presence-limited');
      const { data } = await waitEvent(ch3, 'pusher:subscription_error');
      assert.equal(ch3.subscribed, false);
      assert.ok(data && typeof data === 'object', `subscription_error data: ${JSON.stringify(data)}`);
      await sleep(200);
      assert.equal(third.connection.state, 'connected');
      const chAgain = await subscribe(again, 'presence-limited');
      assert.equal(chAgain.members.count, 2);
    } finally {
      await c.closeAll();
      await countedAuth.close();
    }
  });
});
