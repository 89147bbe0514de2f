// Server-side liveness: pusher:ping after activity_timeout, 4201 after pong_timeout.
// This file's server uses activity_timeout = 1 and pong_timeout = 1 (seconds).
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../lib/server.mjs';
import { Clients, sleep, subscribe, errorCode, collect } from '../lib/helpers.mjs';

let server, clients;

before(async () => {
  server = await startServer({ server: { activity_timeout: 1, pong_timeout: 1 } });
  clients = new Clients(server, null);
});
after(async () => { await clients?.closeAll(); await server?.stop(); });
afterEach(async () => { await clients.closeAll(); });

describe('liveness', () => {
  it('advertises activity_timeout 1', async () => {
    const r = await clients.raw();
    assert.equal((await r.established()).activity_timeout, 1);
  });

  it('an idle client gets pusher:ping, then pusher:error 4201 and close 4201 if it never answers', async () => {
    const r = await clients.raw();
    await r.established();
    await r.event('pusher:ping', { timeout: 4000 });
    const e = await r.event('pusher:error', { timeout: 5000 });
    const data = typeof e.data === 'string' ? JSON.parse(e.data) : e.data;
    assert.equal(data.code, 4201);
    assert.equal((await r.waitClose(5000)).code, 4201);
  });

  it('a client answering pusher:ping with pusher:pong stays connected', async () => {
    const r = await clients.raw();
    await r.established();
    r.ws.on('message', (buf) => {
      try {
        if (JSON.parse(buf.toString()).event === 'pusher:ping') r.send({ event: 'pusher:pong', data: {} });
      } catch { /* ignore */ }
    });
    await sleep(4500);
    assert.equal(r.closed, null, `closed: ${JSON.stringify(r.closed)}`);
    assert.ok(r.frames.some((f) => f.event === 'pusher:ping'), 'server should have pinged');
  });

  it('WebSocket control-frame pings count as activity', async () => {
    const r = await clients.raw();
    await r.established();
    const t = setInterval(() => { try { r.ws.ping(); } catch { /* ignore */ } }, 300);
    try {
      await sleep(4500);
    } finally {
      clearInterval(t);
    }
    assert.equal(r.closed, null, `closed: ${JSON.stringify(r.closed)}`);
  });

  it('pusher-js stays connected (same socket id) across several activity timeouts', async () => {
    const p = await clients.pusher();
    await subscribe(p, 'alive');
    const id = p.connection.socket_id;
    const states = [];
    p.connection.bind('state_change', (s) => states.push(s.current));
    const errors = collect(p.connection, 'error');
    await sleep(5000);
    assert.equal(p.connection.state, 'connected');
    assert.equal(p.connection.socket_id, id, `reconnected (states: ${states.join(',')}, errors: ${JSON.stringify(errors.map((e) => errorCode(e.data)))})`);
  });
});
