// User authentication (pusher.signin), server-to-user messages, terminate_connections, watchlist.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../lib/server.mjs';
import {
  Clients, startAuthServer, makeSdk, waitEvent, collect, sleep, waitUntil, errorCode,
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

async function signedIn(opts) {
  const p = await clients.pusher(opts);
  p.signin();
  await waitUntil(() => p.user.user_data && p.user.serverToUserChannel && p.user.serverToUserChannel.subscribed, {
    what: `signin of user ${opts.user} and #server-to-user subscription`,
  });
  return p;
}

describe('signin', () => {
  it('pusher.signin() succeeds and sendToUser from the Node SDK arrives', async () => {
    const p = await signedIn({ user: '77', name: 'Seller' });
    assert.equal(p.user.user_data.id, '77');
    assert.deepEqual(p.user.user_data.user_info, { name: 'Seller' });
    const got = waitEvent(p.user, 'order-ready');
    await sdk.sendToUser('77', 'order-ready', { order: 9 });
    assert.deepEqual((await got).data, { order: 9 });
  });

  it('sendToUser reaches every signed-in connection of that user and nobody else', async () => {
    const a1 = await signedIn({ user: '80' });
    const a2 = await signedIn({ user: '80' });
    const b = await signedIn({ user: '81' });
    const g1 = collect(a1.user, 'msg');
    const g2 = collect(a2.user, 'msg');
    const gb = collect(b.user, 'msg');
    await sdk.sendToUser('80', 'msg', { n: 1 });
    await waitUntil(() => g1.length === 1 && g2.length === 1, { what: 'both connections of user 80' });
    await sleep(300);
    assert.equal(gb.length, 0);
  });

  it('signin_success on the wire: data string whose user_data is the original string', async () => {
    const r = await clients.raw();
    await r.established();
    const ua = sdk.authenticateUser(r.socketId, { id: '12345', user_info: { name: 'Raw' } });
    r.send({ event: 'pusher:signin', data: { auth: ua.auth, user_data: ua.user_data } });
    const ok = await r.event('pusher:signin_success');
    const d = typeof ok.data === 'string' ? JSON.parse(ok.data) : ok.data;
    assert.equal(typeof d.user_data, 'string');
    assert.equal(d.user_data, ua.user_data);
    r.send({ event: 'pusher:subscribe', data: { channel: '#server-to-user-12345', auth: '' } });
    const sub = await r.event('pusher_internal:subscription_succeeded');
    assert.equal(sub.channel, '#server-to-user-12345');
  });

  it('#server-to-user-X is refused when not signed in as X', async () => {
    const r = await clients.raw();
    await r.established();
    r.send({ event: 'pusher:subscribe', data: { channel: '#server-to-user-5', auth: '' } });
    const reply = await r.next((f) => ['pusher:error', 'pusher:subscription_error', 'pusher_internal:subscription_succeeded'].includes(f.event));
    assert.notEqual(reply.event, 'pusher_internal:subscription_succeeded');
    const ua = sdk.authenticateUser(r.socketId, { id: '6' });
    r.send({ event: 'pusher:signin', data: { auth: ua.auth, user_data: ua.user_data } });
    await r.event('pusher:signin_success');
    const from = r.frames.length;
    r.send({ event: 'pusher:subscribe', data: { channel: '#server-to-user-5', auth: '' } });
    const reply2 = await r.next((f) => ['pusher:error', 'pusher:subscription_error', 'pusher_internal:subscription_succeeded'].includes(f.event), { from });
    assert.notEqual(reply2.event, 'pusher_internal:subscription_succeeded');
  });

  it('bad signin signature: pusher:error 4009 and close 4009', async () => {
    const r = await clients.raw();
    await r.established();
    const ua = sdk.authenticateUser('1.1', { id: '5' }); // signed for another socket id
    r.send({ event: 'pusher:signin', data: { auth: ua.auth, user_data: ua.user_data } });
    const e = await r.event('pusher:error');
    const data = typeof e.data === 'string' ? JSON.parse(e.data) : e.data;
    assert.equal(data.code, 4009);
    assert.equal((await r.waitClose()).code, 4009);
  });

  it('presence subscribe without channel_data uses the signed-in user', async () => {
    const r = await clients.raw();
    await r.established();
    const ua = sdk.authenticateUser(r.socketId, { id: '31', user_info: { name: 'Signed' } });
    r.send({ event: 'pusher:signin', data: { auth: ua.auth, user_data: ua.user_data } });
    await r.event('pusher:signin_success');
    const a = sdk.authorizeChannel(r.socketId, 'presence-signed');
    r.send({ event: 'pusher:subscribe', data: { channel: 'presence-signed', auth: a.auth } });
    const ok = await r.next((f) => f.channel === 'presence-signed');
    assert.equal(ok.event, 'pusher_internal:subscription_succeeded', ok.__text);
    const { presence } = JSON.parse(ok.data);
    assert.deepEqual(presence.ids, ['31']);
    assert.deepEqual(presence.hash, { 31: { name: 'Signed' } });
  });
});

describe('terminate_connections', () => {
  it('terminateUserConnections disconnects every connection of that user with 4009', async () => {
    const victim1 = await signedIn({ user: '66' });
    const victim2 = await signedIn({ user: '66' });
    const bystander = await signedIn({ user: '67' });
    const errors = collect(victim1.connection, 'error');
    await sdk.terminateUserConnections('66');
    await waitUntil(() => victim1.connection.state === 'disconnected' && victim2.connection.state === 'disconnected', {
      what: `both connections of user 66 disconnected (states ${victim1.connection.state}/${victim2.connection.state})`,
    });
    assert.ok(errors.some((e) => errorCode(e.data) === 4009), `errors: ${JSON.stringify(errors.map((e) => e.data))}`);
    await sleep(1500);
    assert.equal(victim1.connection.state, 'disconnected', 'pusher-js must not reconnect after 4009');
    assert.equal(bystander.connection.state, 'connected');
  });

  it('raw: terminated connection gets pusher:error 4009 then close 4009', async () => {
    const r = await clients.raw();
    await r.established();
    const ua = sdk.authenticateUser(r.socketId, { id: '68' });
    r.send({ event: 'pusher:signin', data: { auth: ua.auth, user_data: ua.user_data } });
    await r.event('pusher:signin_success');
    await sdk.terminateUserConnections('68');
    const closed = await r.waitClose();
    assert.equal(closed.code, 4009);
  });
});

describe('watchlist', () => {
  it('online on signin of a watched user, offline when its last connection goes away', async () => {
    const early = await signedIn({ user: 'w3' }); // already online before the watcher signs in
    const watcher = await clients.pusher({ user: 'w1', watchlist: ['w2', 'w3'] });
    const online = collect(watcher.user.watchlist, 'online');
    const offline = collect(watcher.user.watchlist, 'offline');
    watcher.signin();
    await waitUntil(() => online.some((e) => e.data.user_ids.includes('w3')), {
      what: `initial online event with w3 (online: ${JSON.stringify(online.map((e) => e.data))})`,
    });
    const w2 = await signedIn({ user: 'w2' });
    await waitUntil(() => online.some((e) => e.data.user_ids.includes('w2')), { what: 'online for w2' });
    w2.disconnect();
    await waitUntil(() => offline.some((e) => e.data.user_ids.includes('w2')), { what: 'offline for w2' });
    early.disconnect();
    await waitUntil(() => offline.some((e) => e.data.user_ids.includes('w3')), { what: 'offline for w3' });
  });
});
