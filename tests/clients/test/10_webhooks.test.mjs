// Webhooks (PUSHER.md §8), validated with the Node SDK's pusher.webhook() as a Laravel/Node
// receiver would, plus the exact header casing pusher-http-php needs.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import crypto from 'node:crypto';
import { startServer } from '../lib/server.mjs';
import {
  Clients, startAuthServer, makeSdk, subscribe, sleep, waitUntil,
} from '../lib/helpers.mjs';

let server, auth, clients, sdk, receiver;

/** A webhook receiver on loopback recording every request (raw headers and raw body). */
async function startReceiver() {
  const hits = [];
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      hits.push({ method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders, rawBody: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${srv.address().port}/pusher/webhook`,
    hits,
    /** Every event of every valid request for `key`, flattened. */
    events(key) {
      const out = [];
      for (const h of hits) {
        if (h.headers['x-pusher-key'] !== key) continue;
        try { for (const e of JSON.parse(h.rawBody).events || []) out.push(e); } catch { /* ignore */ }
      }
      return out;
    },
    close: () => new Promise((r) => { srv.closeAllConnections?.(); srv.close(() => r()); }),
  };
}

before(async () => {
  receiver = await startReceiver();
  server = await startServer({
    apps: { main: { webhook_url: receiver.url }, counted: { webhook_url: receiver.url } },
  });
  auth = await startAuthServer(server);
  clients = new Clients(server, auth);
  sdk = makeSdk(server);
});
after(async () => { await clients?.closeAll(); await auth?.close(); await server?.stop(); await receiver?.close(); });
afterEach(async () => { await clients.closeAll(); });

const find = (key, pred) => receiver.events(key).find(pred);
const mainKey = () => server.apps.main.key;

async function waitHook(key, pred, what) {
  return waitUntil(() => find(key, pred), {
    timeout: 8000, what: `webhook ${what} (got: ${JSON.stringify(receiver.events(key)).slice(0, 1500)})`,
  });
}

describe('webhooks', () => {
  it('channel_occupied / channel_vacated; request valid for the Node SDK; exact headers', async () => {
    const p = await clients.pusher();
    await subscribe(p, 'wh-room');
    await waitHook(mainKey(), (e) => e.name === 'channel_occupied' && e.channel === 'wh-room', 'channel_occupied');
    p.unsubscribe('wh-room');
    await waitHook(mainKey(), (e) => e.name === 'channel_vacated' && e.channel === 'wh-room', 'channel_vacated');

    const hit = receiver.hits.find((h) => h.rawBody.includes('"wh-room"'));
    assert.equal(hit.method, 'POST');
    const wh = sdk.webhook({ headers: hit.headers, rawBody: hit.rawBody });
    assert.equal(wh.isValid(), true, `Node SDK rejects the webhook: headers ${JSON.stringify(hit.headers)}`);
    assert.equal(hit.headers['content-type'], 'application/json', 'Content-Type must be exactly application/json');
    const names = hit.rawHeaders.filter((_, i) => i % 2 === 0);
    assert.ok(names.includes('X-Pusher-Key'), `header names as sent: ${names}`);
    assert.ok(names.includes('X-Pusher-Signature'), `header names as sent: ${names}`);
    const expected = crypto.createHmac('sha256', server.apps.main.secret).update(hit.rawBody).digest('hex');
    assert.equal(hit.headers['x-pusher-signature'], expected);
    const body = JSON.parse(hit.rawBody);
    assert.equal(typeof body.time_ms, 'number');
    assert.ok(Math.abs(Date.now() - body.time_ms) < 300000, 'time_ms within 5 minutes (pusher-http-python checks)');
  });

  it('member_added / member_removed with user_id, once per user', async () => {
    const a1 = await clients.pusher({ user: 'wh-u1' });
    const a2 = await clients.pusher({ user: 'wh-u1' });
    await subscribe(a1, 'presence-wh');
    await subscribe(a2, 'presence-wh');
    await waitHook(mainKey(), (e) => e.name === 'member_added' && e.channel === 'presence-wh' && e.user_id === 'wh-u1', 'member_added');
    a1.disconnect();
    await sleep(600);
    assert.equal(find(mainKey(), (e) => e.name === 'member_removed' && e.channel === 'presence-wh'), undefined,
      'member_removed must wait for the last connection of the user');
    a2.disconnect();
    await waitHook(mainKey(), (e) => e.name === 'member_removed' && e.channel === 'presence-wh' && e.user_id === 'wh-u1', 'member_removed');
    assert.equal(receiver.events(mainKey()).filter((e) => e.name === 'member_added' && e.channel === 'presence-wh').length, 1);
  });

  it('client_event with channel, event, data string, socket_id and user_id (presence)', async () => {
    const a = await clients.pusher({ user: 'wh-a' });
    const b = await clients.pusher({ user: 'wh-b' });
    const ch = await subscribe(a, 'presence-wh-chat');
    await subscribe(b, 'presence-wh-chat');
    ch.trigger('client-typing', { t: 1 });
    const e = await waitHook(mainKey(), (x) => x.name === 'client_event' && x.channel === 'presence-wh-chat', 'client_event');
    assert.equal(e.event, 'client-typing');
    assert.equal(typeof e.data, 'string');
    assert.deepEqual(JSON.parse(e.data), { t: 1 });
    assert.equal(e.socket_id, a.connection.socket_id);
    assert.equal(e.user_id, 'wh-a');
  });

  it('cache_miss', async () => {
    const p = await clients.pusher();
    await subscribe(p, 'cache-wh-miss');
    await waitHook(mainKey(), (e) => e.name === 'cache_miss' && e.channel === 'cache-wh-miss', 'cache_miss');
  });

  it('subscription_count (app with subscription_count = true)', async () => {
    const key = server.apps.counted.key;
    const p1 = await clients.pusher({ app: 'counted' });
    const p2 = await clients.pusher({ app: 'counted' });
    await subscribe(p1, 'wh-counted');
    await subscribe(p2, 'wh-counted');
    await waitHook(key, (e) => e.name === 'subscription_count' && e.channel === 'wh-counted' && e.subscription_count === 2, 'subscription_count 2');
    const hit = receiver.hits.find((h) => h.headers['x-pusher-key'] === key);
    const wh = makeSdk(server, 'counted').webhook({ headers: hit.headers, rawBody: hit.rawBody });
    assert.equal(wh.isValid(), true);
  });
});
