// pusher-js' HTTP fallback transports (PUSHER.md §9) — the seed's "clients whose network blocks
// WebSocket". The node build of pusher-js has xhr_streaming and xhr_polling; each test forces one.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../lib/server.mjs';
import {
  Clients, startAuthServer, makeSdk, subscribe, waitEvent, collect, errorCode, waitUntil, sleep, SOCKET_ID_RE,
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

function httpOpts(transport) {
  return {
    enabledTransports: [transport],
    httpHost: server.host,
    httpPort: server.port,
    httpsPort: server.port,
    httpPath: '/pusher',
    timeout: 10000,
  };
}

for (const transport of ['xhr_streaming', 'xhr_polling']) {
  describe(`pusher-js over ${transport}`, () => {
    it('connects with a digits.digits socket id', async () => {
      const p = await clients.pusher({ ...httpOpts(transport), timeout: 10000 });
      assert.match(p.connection.socket_id, SOCKET_ID_RE);
    });

    it('public and private events from the Node SDK arrive', async () => {
      const p = await clients.pusher({ ...httpOpts(transport), timeout: 10000 });
      const pub = await subscribe(p, 'fb-public');
      const priv = await subscribe(p, 'private-fb.1');
      const g1 = waitEvent(pub, 'e1');
      const g2 = waitEvent(priv, 'e2');
      await sdk.trigger('fb-public', 'e1', { a: 1 });
      await sdk.trigger('private-fb.1', 'e2', { b: 2 });
      assert.deepEqual((await g1).data, { a: 1 });
      assert.deepEqual((await g2).data, { b: 2 });
    });

    it('client events flow between an HTTP client and a WebSocket client', async () => {
      const h = await clients.pusher({ ...httpOpts(transport), user: '1', timeout: 10000 });
      const w = await clients.pusher({ user: '2' });
      const hch = await subscribe(h, 'presence-fb');
      const wch = await subscribe(w, 'presence-fb');
      await waitUntil(() => hch.members.count === 2, { what: `the HTTP client sees 2 members (has ${hch.members.count})` });
      const toWs = waitEvent(wch, 'client-hi');
      hch.trigger('client-hi', { from: 'http' });
      const got = await toWs;
      assert.deepEqual(got.data, { from: 'http' });
      assert.equal(got.metadata.user_id, '1');
      const toHttp = waitEvent(hch, 'client-hi');
      wch.trigger('client-hi', { from: 'ws' });
      assert.deepEqual((await toHttp).data, { from: 'ws' });
    });

    it('leaving: disconnecting the HTTP client removes its presence member', async () => {
      const h = await clients.pusher({ ...httpOpts(transport), user: '1', timeout: 10000 });
      const w = await clients.pusher({ user: '2' });
      await subscribe(h, 'presence-fb-leave');
      const wch = await subscribe(w, 'presence-fb-leave');
      const removed = collect(wch, 'pusher:member_removed');
      h.disconnect();
      // pusher-js only aborts its requests; the server notices via session expiry (PUSHER.md §9.6).
      await waitUntil(() => removed.length === 1, { timeout: 45000, what: 'member_removed after the HTTP session expired' });
    });

    it('unknown app key is refused with 4001', async () => {
      const p = await clients.pusher({ ...httpOpts(transport), app: 'no-such-key', wait: false });
      const errors = collect(p.connection, 'error');
      await waitUntil(() => errors.some((e) => errorCode(e.data) === 4001), {
        timeout: 10000, what: `error 4001 (errors: ${JSON.stringify(errors.map((e) => e.data))})`,
      });
      await sleep(300);
      assert.ok(['disconnected', 'failed'].includes(p.connection.state), p.connection.state);
    });
  });
}

describe('fallback framing', () => {
  it('xhr receive: "o" then a[...] with the connection_established frame', async () => {
    const ac = new AbortController();
    const t = setTimeout(() => ac.abort(), 5000);
    try {
      const res = await fetch(
        `${server.base}/pusher/app/${server.apps.main.key}/123/abcdefgh/xhr?protocol=7&client=js&version=8.6.0&t=1&n=0`,
        { method: 'POST', signal: ac.signal },
      );
      assert.equal(res.status, 200);
      const text = await res.text();
      const lines = text.split('\n').filter((l) => l && !/^h+$/.test(l));
      assert.equal(lines[0], 'o', `body: ${text.slice(0, 500)}`);
      assert.ok(lines[1].startsWith('a['), `body: ${text.slice(0, 500)}`);
      const frames = JSON.parse(lines[1].slice(1));
      const est = JSON.parse(frames[0]);
      assert.equal(est.event, 'pusher:connection_established');
      assert.match(JSON.parse(est.data).socket_id, SOCKET_ID_RE);
    } finally {
      clearTimeout(t);
    }
  });

  it('CORS preflight answers 204 with allow headers', async () => {
    const res = await fetch(`${server.base}/pusher/app/${server.apps.main.key}/1/abcdefgh/xhr_send`, {
      method: 'OPTIONS',
      headers: { Origin: 'http://shop.example', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type' },
    });
    assert.equal(res.status, 204);
    assert.ok(res.headers.get('access-control-allow-origin'));
    assert.match(res.headers.get('access-control-allow-methods') || '', /POST/);
  });
});
