// Public, private, private-encrypted and cache channels through pusher-js, Echo and the Node SDK.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../lib/server.mjs';
import {
  Clients, startAuthServer, makeSdk, subscribe, waitEvent, collect, sleep, signedRequest,
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

const parse = (d) => (typeof d === 'string' ? JSON.parse(d) : d);

/** Subscribe a raw socket; resolves with the reply frame (succeeded or an error). */
async function rawSubscribe(r, channel, authStr = '', channelData) {
  const from = r.frames.length;
  const data = { channel, auth: authStr };
  if (channelData !== undefined) data.channel_data = channelData;
  r.send({ event: 'pusher:subscribe', data });
  return r.next((f) => (f.channel === channel && (f.event === 'pusher_internal:subscription_succeeded' || f.event === 'pusher:subscription_error'))
    || f.event === 'pusher:error', { from });
}

describe('public channels', () => {
  it('pusher-js receives an SDK-triggered event; raw data is byte-identical and succeeded data is "{}"', async () => {
    const p = await clients.pusher();
    const ch = await subscribe(p, 'orders');
    const r = await clients.raw();
    await r.established();
    const ok = await rawSubscribe(r, 'orders');
    assert.equal(ok.event, 'pusher_internal:subscription_succeeded');
    assert.equal(ok.data, '{}', 'subscription_succeeded data must be the string "{}"');

    const got = waitEvent(ch, 'created');
    const from = r.frames.length;
    await sdk.trigger('orders', 'created', { id: 1, note: 'ünïcode ✓ "q"' });
    const { data } = await got;
    assert.deepEqual(data, { id: 1, note: 'ünïcode ✓ "q"' });
    const raw = await r.next((f) => f.event === 'created', { from });
    assert.equal(raw.channel, 'orders');
    assert.equal(raw.data, JSON.stringify({ id: 1, note: 'ünïcode ✓ "q"' }));
  });

  it('Laravel Echo channel().listen() with a dotted name and a leading-dot event', async () => {
    const echo = await clients.echo();
    const got = new Promise((resolve) => echo.channel('company.1.orders').listen('.order.created', resolve));
    await subscribe(echo.connector.pusher, 'company.1.orders');
    await sdk.trigger('company.1.orders', 'order.created', { id: 7 });
    const data = await Promise.race([got, sleep(5000).then(() => { throw new Error('no event'); })]);
    assert.deepEqual(data, { id: 7 });
  });

  it('no delivery after unsubscribe', async () => {
    const p = await clients.pusher();
    const ch = await subscribe(p, 'unsub-test');
    const seen = collect(ch, 'ev');
    p.unsubscribe('unsub-test');
    await sleep(200);
    await sdk.trigger('unsub-test', 'ev', { a: 1 });
    await sleep(500);
    assert.equal(seen.length, 0);
  });

  it('invalid channel name is refused without closing the connection', async () => {
    const r = await clients.raw();
    await r.established();
    const reply = await rawSubscribe(r, 'bad channel!');
    assert.notEqual(reply.event, 'pusher_internal:subscription_succeeded');
    await sleep(200);
    assert.equal(r.closed, null, 'connection must stay open');
  });
});

describe('private channels', () => {
  it('pusher-js authorizes through the ajax endpoint and receives events', async () => {
    const p = await clients.pusher();
    const before = auth.requests.length;
    const ch = await subscribe(p, 'private-orders.1');
    assert.ok(auth.requests.length > before, 'auth endpoint was called');
    assert.equal(auth.requests.at(-1).params.socket_id, p.connection.socket_id);
    const got = waitEvent(ch, 'shipped');
    await sdk.trigger('private-orders.1', 'shipped', { id: 1 });
    assert.deepEqual((await got).data, { id: 1 });
  });

  it('bad signature: server sends pusher:subscription_error (status 401) on the channel, connection stays up', async () => {
    const p = await clients.pusher();
    const ch = p.subscribe('private-badsig');
    const { data } = await waitEvent(ch, 'pusher:subscription_error');
    assert.equal(ch.subscribed, false);
    assert.equal(data.status, 401, `subscription_error data: ${JSON.stringify(data)}`);
    assert.equal(typeof data.error, 'string');
    await sleep(200);
    assert.equal(p.connection.state, 'connected');
    const seen = collect(ch, 'ev');
    await sdk.trigger('private-badsig', 'ev', {});
    await sleep(400);
    assert.equal(seen.length, 0, 'an unauthorized subscriber must not receive events');
  });

  it('raw: empty auth, wrong key part and signature for another socket are all refused', async () => {
    const r = await clients.raw();
    await r.established();
    const other = await clients.raw();
    await other.established();
    const cases = [
      ['private-a', ''],
      ['private-b', `other-key:${sdk.authorizeChannel(r.socketId, 'private-b').auth.split(':')[1]}`],
      ['private-c', sdk.authorizeChannel(other.socketId, 'private-c').auth],
      ['private-d', 'garbage'],
    ];
    for (const [channel, a] of cases) {
      const reply = await rawSubscribe(r, channel, a);
      assert.notEqual(reply.event, 'pusher_internal:subscription_succeeded', `${channel} with auth '${a}' must be refused`);
    }
    const ok = await rawSubscribe(r, 'private-e', sdk.authorizeChannel(r.socketId, 'private-e').auth);
    assert.equal(ok.event, 'pusher_internal:subscription_succeeded');
    assert.equal(ok.data, '{}');
    assert.equal(r.closed, null);
  });

  it('auth endpoint 403 (Laravel denies) surfaces as pusher:subscription_error status 403', async () => {
    const p = await clients.pusher();
    const ch = p.subscribe('private-forbidden.1');
    const { data } = await waitEvent(ch, 'pusher:subscription_error');
    assert.equal(data.status, 403);
    assert.equal(p.connection.state, 'connected');
  });
});

describe('private-encrypted channels', () => {
  // pusher-js' node build ships tweetnacl: full end-to-end decryption is tested, and a raw
  // subscriber checks the server relays the ciphertext string untouched.
  it('pusher-js decrypts an event the Node SDK encrypted; the server relays ciphertext only', async () => {
    const p = await clients.pusher();
    const ch = await subscribe(p, 'private-encrypted-vault');
    const r = await clients.raw();
    await r.established();
    const ok = await rawSubscribe(r, 'private-encrypted-vault', sdk.authorizeChannel(r.socketId, 'private-encrypted-vault').auth);
    assert.equal(ok.event, 'pusher_internal:subscription_succeeded');
    const got = waitEvent(ch, 'secret');
    const from = r.frames.length;
    await sdk.trigger('private-encrypted-vault', 'secret', { pin: '1234' });
    assert.deepEqual((await got).data, { pin: '1234' });
    const raw = await r.next((f) => f.event === 'secret', { from });
    assert.equal(typeof raw.data, 'string');
    const env = JSON.parse(raw.data);
    assert.ok(env.nonce && env.ciphertext, `relayed data: ${raw.data}`);
    assert.ok(!raw.data.includes('1234'));
  });

  it('a ciphertext-shaped string published by hand is relayed byte for byte', async () => {
    const r = await clients.raw();
    await r.established();
    await rawSubscribe(r, 'private-encrypted-box', sdk.authorizeChannel(r.socketId, 'private-encrypted-box').auth);
    const data = '{"nonce":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYX","ciphertext":"c2VjcmV0\\/Ym94+w=="}';
    const from = r.frames.length;
    const res = await signedRequest(server, {
      path: `/apps/${server.apps.main.id}/events`, body: { name: 'sealed', channel: 'private-encrypted-box', data },
    });
    assert.equal(res.status, 200, res.text);
    const raw = await r.next((f) => f.event === 'sealed', { from });
    assert.equal(raw.data, data);
  });

  it('client events on private-encrypted channels are not relayed', async () => {
    const a = await clients.raw();
    const b = await clients.raw();
    await a.established();
    await b.established();
    for (const r of [a, b]) await rawSubscribe(r, 'private-encrypted-chat', sdk.authorizeChannel(r.socketId, 'private-encrypted-chat').auth);
    const from = b.frames.length;
    a.send({ event: 'client-typing', channel: 'private-encrypted-chat', data: { x: 1 } });
    await sleep(500);
    assert.equal(b.frames.slice(from).filter((f) => f.event === 'client-typing').length, 0);
  });
});

describe('cache channels', () => {
  it('empty cache channel: pusher:cache_miss after subscription_succeeded', async () => {
    const p = await clients.pusher();
    const ch = p.subscribe('cache-empty');
    const miss = waitEvent(ch, 'pusher:cache_miss');
    await waitEvent(ch, 'pusher:subscription_succeeded');
    await miss;
    const r = await clients.raw();
    await r.established();
    const ok = await rawSubscribe(r, 'cache-empty2');
    assert.equal(ok.event, 'pusher_internal:subscription_succeeded');
    const m = await r.event('pusher:cache_miss');
    assert.equal(m.channel, 'cache-empty2');
    assert.ok(r.frames.indexOf(m) > r.frames.indexOf(ok), 'cache_miss comes after subscription_succeeded');
  });

  it('a new subscriber gets the last event replayed (public cache)', async () => {
    const p1 = await clients.pusher();
    await subscribe(p1, 'cache-prices');
    await sdk.trigger('cache-prices', 'price', { v: 1 });
    await sdk.trigger('cache-prices', 'price', { v: 2 });
    await sleep(100);
    const p2 = await clients.pusher();
    const ch = p2.subscribe('cache-prices');
    const misses = collect(ch, 'pusher:cache_miss');
    const { data } = await waitEvent(ch, 'price');
    assert.deepEqual(data, { v: 2 });
    assert.equal(ch.subscribed, true);
    assert.equal(misses.length, 0);
  });

  it('cache is filled even when nobody is subscribed; raw replay is byte-identical', async () => {
    await sdk.trigger('cache-lonely', 'state', { on: true });
    const r = await clients.raw();
    await r.established();
    const ok = await rawSubscribe(r, 'cache-lonely');
    assert.equal(ok.event, 'pusher_internal:subscription_succeeded');
    const ev = await r.event('state');
    assert.equal(ev.channel, 'cache-lonely');
    assert.equal(ev.data, '{"on":true}');
    assert.ok(r.frames.indexOf(ev) > r.frames.indexOf(ok));
  });

  it('private-cache channel replays to an authorized pusher-js subscriber', async () => {
    await sdk.trigger('private-cache-stock.1', 'level', { qty: 5 });
    const p = await clients.pusher();
    const ch = p.subscribe('private-cache-stock.1');
    const { data } = await waitEvent(ch, 'level');
    assert.deepEqual(data, { qty: 5 });
  });
});
