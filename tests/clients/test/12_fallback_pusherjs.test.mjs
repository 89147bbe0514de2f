// pusher-js (node build: its bundled `xmlhttprequest` drives the xhr transports) restricted to
// one HTTP fallback transport at a time, against a live pushbox (PUSHER.md §9): connect,
// public/private/presence channels, events from the Node SDK, client events both ways with a
// WebSocket client, the 256 KiB streaming rollover on the same session, and presence
// member_removed once an abandoned fallback session expires.
//
// The server runs with pong_timeout = 2: fallback sessions expire after that long with no
// receive request attached and no xhr_send (the production default is 30 s).
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startServer } from '../lib/server.mjs';
import {
  Clients, startAuthServer, makeSdk, subscribe, waitEvent, collect, waitUntil, sleep, SOCKET_ID_RE,
} from '../lib/helpers.mjs';

const EXPIRY_S = 2;
let server, auth, clients, sdk;

before(async () => {
  server = await startServer({ server: { pong_timeout: EXPIRY_S } });
  auth = await startAuthServer(server);
  clients = new Clients(server, auth);
  sdk = makeSdk(server);
});
after(async () => { await clients?.closeAll(); await auth?.close(); await server?.stop(); });
afterEach(async () => { await clients.closeAll(); });

function only(transport, extra = {}) {
  return {
    enabledTransports: [transport],
    httpHost: '127.0.0.1',
    httpPort: server.port,
    forceTLS: false,
    cluster: '',
    timeout: 10000,
    ...extra,
  };
}

const transportName = (p) => p.connection.connection?.transport?.name;

for (const transport of ['xhr_streaming', 'xhr_polling']) {
  describe(`pusher-js restricted to ${transport}`, () => {
    it('connects over that transport', async () => {
      const p = await clients.pusher(only(transport));
      assert.match(p.connection.socket_id, SOCKET_ID_RE);
      assert.equal(transportName(p), transport);
    });

    it('public, private and presence channels receive events published with the Node SDK', async () => {
      const p = await clients.pusher(only(transport, { user: '7', name: 'Fallback Fiona' }));
      const pub = await subscribe(p, `fbk-public-${transport}`);
      const priv = await subscribe(p, `private-fbk.${transport}`);
      const pres = await subscribe(p, `presence-fbk.${transport}`);
      assert.equal(pres.members.count, 1);
      assert.equal(pres.members.me.id, '7');
      assert.deepEqual(pres.members.me.info, { name: 'Fallback Fiona' });
      const got = [waitEvent(pub, 'pub'), waitEvent(priv, 'App\\Events\\OrderShipped'), waitEvent(pres, 'pres')];
      await sdk.trigger(`fbk-public-${transport}`, 'pub', { n: 1, text: 'héllo ✓' });
      await sdk.trigger(`private-fbk.${transport}`, 'App\\Events\\OrderShipped', { order: 42 });
      await sdk.trigger(`presence-fbk.${transport}`, 'pres', { n: 3 });
      const [a, b, c] = await Promise.all(got);
      assert.deepEqual(a.data, { n: 1, text: 'héllo ✓' });
      assert.deepEqual(b.data, { order: 42 });
      assert.deepEqual(c.data, { n: 3 });
      assert.equal(transportName(p), transport);
    });

    it('a burst of events arrives complete and in order', async () => {
      const p = await clients.pusher(only(transport));
      const ch = await subscribe(p, `fbk-burst-${transport}`);
      const seen = collect(ch, 'tick');
      const batch = [];
      for (let i = 0; i < 60; i++) batch.push({ channel: `fbk-burst-${transport}`, name: 'tick', data: { i } });
      for (let i = 0; i < batch.length; i += 10) await sdk.triggerBatch(batch.slice(i, i + 10));
      await waitUntil(() => seen.length === 60, { timeout: 10000, what: `60 ticks (got ${seen.length})` });
      assert.deepEqual(seen.map((e) => e.data.i), [...Array(60).keys()]);
    });

    it('client events flow between the HTTP client and a WebSocket client', async () => {
      const h = await clients.pusher(only(transport, { user: '1' }));
      const w = await clients.pusher({ user: '2' });
      const name = `presence-fbk-chat.${transport}`;
      const hch = await subscribe(h, name);
      const wch = await subscribe(w, name);
      assert.equal(wch.members.count, 2);
      const toWs = waitEvent(wch, 'client-typing');
      assert.ok(hch.trigger('client-typing', { from: 'http' }));
      const got = await toWs;
      assert.deepEqual(got.data, { from: 'http' });
      assert.equal(got.metadata.user_id, '1');
      const toHttp = waitEvent(hch, 'client-typing');
      wch.trigger('client-typing', { from: 'ws' });
      assert.deepEqual((await toHttp).data, { from: 'ws' });
    });

    it('presence member_removed once the abandoned fallback session expires', async () => {
      const h = await clients.pusher(only(transport, { user: '31' }));
      const w = await clients.pusher({ user: '32' });
      const name = `presence-fbk-leave.${transport}`;
      await subscribe(h, name);
      const wch = await subscribe(w, name);
      assert.equal(wch.members.count, 2);
      const removed = collect(wch, 'pusher:member_removed');
      const t0 = Date.now();
      // pusher-js only aborts its requests; nothing tells the server (PUSHER.md §9.5).
      h.disconnect();
      await waitUntil(() => removed.length === 1, { timeout: (EXPIRY_S + 5) * 1000, what: 'member_removed' });
      assert.equal(removed[0].data.id, '31');
      const took = Date.now() - t0;
      assert.ok(took >= (EXPIRY_S - 1) * 1000, `removed after ${took} ms: too early for an expiry`);
      assert.equal(wch.members.count, 1);
    });
  });
}

describe('xhr_streaming rollover', () => {
  it('past 256 KiB pusher-js resumes the same session and every event arrives once', async () => {
    // Count the receive requests pusher-js's bundled XMLHttpRequest makes (it calls http.request).
    const streams = [];
    const original = http.request;
    http.request = function (opts, ...rest) {
      const path = typeof opts === 'object' && opts ? opts.path || '' : String(opts);
      if (path.includes('/xhr_streaming')) streams.push(path.split('?')[0]);
      return original.call(this, opts, ...rest);
    };
    try {
      await rollover(streams);
    } finally {
      http.request = original;
    }
  });
});

async function rollover(streams) {
  {
    const p = await clients.pusher(only('xhr_streaming'));
    const socketId = p.connection.socket_id;
    const states = collect(p.connection, 'state_change');
    const ch = await subscribe(p, 'fbk-big');
    const seen = collect(ch, 'chunk');
    const pad = 'z'.repeat(9000);
    const n = 45; // 45 × ~9.1 KB ≈ 410 KB: at least one rollover
    for (let i = 0; i < n; i++) await sdk.trigger('fbk-big', 'chunk', { i, pad });
    await waitUntil(() => seen.length >= n, { timeout: 15000, what: `${n} events (got ${seen.length})` });
    await sleep(300);
    assert.deepEqual(seen.map((e) => e.data.i), [...Array(n).keys()]);
    assert.equal(p.connection.state, 'connected');
    assert.equal(p.connection.socket_id, socketId, 'same session: no reconnect');
    assert.equal(states.length, 0, `no state changes: ${JSON.stringify(states.map((s) => s.data))}`);
    // Still live after the rollover.
    const next = waitEvent(ch, 'after');
    await sdk.trigger('fbk-big', 'after', { ok: true });
    assert.deepEqual((await next).data, { ok: true });
    assert.ok(streams.length >= 2, `at least one rollover (receive requests: ${streams.length})`);
    assert.equal(new Set(streams).size, 1, `every stream on the same session: ${[...new Set(streams)]}`);
  }
}
