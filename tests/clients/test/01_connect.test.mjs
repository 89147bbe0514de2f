// Connection handshake and refusals, through pusher-js and at the wire level.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../lib/server.mjs';
import {
  Clients, Pusher, pusherOptions, collect, errorCode, sleep, waitUntil, SOCKET_ID_RE,
} from '../lib/helpers.mjs';

let server;
let clients;

before(async () => {
  server = await startServer({ server: { activity_timeout: 25 } });
  clients = new Clients(server, null);
});
after(async () => { await clients?.closeAll(); await server?.stop(); });
afterEach(async () => { await clients.closeAll(); });

/** A pusher-js client that is expected to be refused; returns {p, errors, states}. */
async function refusedClient(key) {
  const p = new Pusher(key, pusherOptions(server, null));
  clients.all.push(p);
  const errors = collect(p.connection, 'error');
  const states = [];
  p.connection.bind('state_change', (s) => states.push(s.current));
  await waitUntil(() => errors.some((e) => errorCode(e.data) !== undefined), {
    timeout: 5000, what: `a pusher-js 'error' event with a Pusher code (errors: ${JSON.stringify(errors.map((e) => e.data))})`,
  });
  await waitUntil(() => ['disconnected', 'failed'].includes(p.connection.state), {
    timeout: 5000, what: `state disconnected/failed (states: ${states.join(',')})`,
  });
  return { p, errors, states };
}

describe('connect', () => {
  it('pusher-js reaches connected with a digits.digits socket_id', async () => {
    const p = await clients.pusher();
    assert.equal(p.connection.state, 'connected');
    assert.match(p.connection.socket_id, SOCKET_ID_RE);
  });

  it('connection_established frame: string data, socket_id, configured activity_timeout', async () => {
    const r = await clients.raw();
    const f = await r.event('pusher:connection_established');
    assert.equal(r.frames[0].event, 'pusher:connection_established', 'first frame must be connection_established');
    assert.equal(typeof f.data, 'string', 'data must be a JSON string');
    const d = JSON.parse(f.data);
    assert.equal(typeof d.socket_id, 'string');
    assert.match(d.socket_id, SOCKET_ID_RE);
    assert.equal(d.activity_timeout, 25);
  });

  it('socket ids are unique across connections', async () => {
    const ids = new Set();
    for (let i = 0; i < 6; i++) {
      const r = await clients.raw();
      ids.add((await r.established()).socket_id);
    }
    assert.equal(ids.size, 6);
  });

  it('answers pusher:ping with pusher:pong', async () => {
    const r = await clients.raw();
    await r.established();
    const from = r.frames.length;
    r.send({ event: 'pusher:ping', data: {} });
    const pong = await r.event('pusher:pong', { from, timeout: 3000 });
    assert.equal(pong.event, 'pusher:pong');
  });

  it('unknown app key: pusher-js gets error 4001 and gives up', async () => {
    const { p, errors } = await refusedClient('no-such-key');
    assert.ok(errors.some((e) => errorCode(e.data) === 4001), `errors: ${JSON.stringify(errors.map((e) => e.data))}`);
    await sleep(1500); // no retry: refused connections stay down
    assert.ok(['disconnected', 'failed'].includes(p.connection.state), `state ${p.connection.state}`);
  });

  it('unknown app key on the wire: pusher:error 4001 then close 4001', async () => {
    const r = await clients.raw('no-such-key');
    const f = await r.event('pusher:error');
    const data = typeof f.data === 'string' ? JSON.parse(f.data) : f.data;
    assert.equal(data.code, 4001);
    const closed = await r.waitClose();
    assert.equal(closed.code, 4001);
  });

  it('disabled app: pusher-js gets error 4003 and gives up', async () => {
    const { errors } = await refusedClient(server.apps.disabled.key);
    assert.ok(errors.some((e) => errorCode(e.data) === 4003), `errors: ${JSON.stringify(errors.map((e) => e.data))}`);
  });

  it('disabled app on the wire: pusher:error 4003 then close 4003', async () => {
    const r = await clients.raw(server.apps.disabled.key);
    const f = await r.event('pusher:error');
    const data = typeof f.data === 'string' ? JSON.parse(f.data) : f.data;
    assert.equal(data.code, 4003);
    assert.equal((await r.waitClose()).code, 4003);
  });

  it('unsupported protocol version is refused with 4007', async () => {
    const r = await clients.raw(server.apps.main.key, '?protocol=3&client=js&version=8.6.0');
    const f = await r.event('pusher:error');
    const data = typeof f.data === 'string' ? JSON.parse(f.data) : f.data;
    assert.equal(data.code, 4007);
    assert.equal((await r.waitClose()).code, 4007);
  });

  it('GET /up answers 200 {"status":"ok"}', async () => {
    const res = await fetch(`${server.base}/up`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { status: 'ok' });
  });
});
