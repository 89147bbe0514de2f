// Per-app limits seen through pusher-js, and the ws_path prefix (pusher-js `wsPath`).
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../lib/server.mjs';
import { Clients, RawSocket, subscribe, waitEvent, collect, errorCode, waitUntil, makeSdk, SOCKET_ID_RE } from '../lib/helpers.mjs';

let server, clients;

before(async () => {
  server = await startServer({
    server: { ws_path: '/realtime' },
    apps: { counted: { max_connections: 2, max_channels_per_connection: 2 } },
  });
  clients = new Clients(server, null);
});
after(async () => { await clients?.closeAll(); await server?.stop(); });
afterEach(async () => { await clients.closeAll(); });

describe('ws_path prefix', () => {
  it('pusher-js with wsPath connects under the configured prefix and receives events', async () => {
    const p = await clients.pusher({ wsPath: '/realtime' });
    assert.match(p.connection.socket_id, SOCKET_ID_RE);
    const ch = await subscribe(p, 'prefixed');
    const got = waitEvent(ch, 'ev');
    await makeSdk(server).trigger('prefixed', 'ev', { ok: 1 });
    assert.deepEqual((await got).data, { ok: 1 });
  });
});

describe('limits', () => {
  it('max_connections = 2: the third connection gets 4004 and gives up', async () => {
    await clients.pusher({ app: 'counted', wsPath: '/realtime' });
    await clients.pusher({ app: 'counted', wsPath: '/realtime' });
    const p = await clients.pusher({ app: 'counted', wsPath: '/realtime', wait: false });
    const errors = collect(p.connection, 'error');
    await waitUntil(() => errors.some((e) => errorCode(e.data) === 4004), {
      what: `error 4004 (errors: ${JSON.stringify(errors.map((e) => e.data))})`,
    });
    await waitUntil(() => ['disconnected', 'failed'].includes(p.connection.state), { what: 'gave up' });
  });

  it('max_channels_per_connection = 2: a third subscription is refused, the connection stays', async () => {
    const r = await RawSocket.open(`ws://${server.host}:${server.port}/realtime/app/${server.apps.counted.key}?protocol=7&client=js&version=8.6.0`);
    clients.all.push(r);
    await r.established();
    const reply = async (channel) => {
      const from = r.frames.length;
      r.send({ event: 'pusher:subscribe', data: { channel, auth: '' } });
      return r.next((f) => (f.channel === channel && ['pusher_internal:subscription_succeeded', 'pusher:subscription_error'].includes(f.event))
        || f.event === 'pusher:error', { from });
    };
    assert.equal((await reply('one')).event, 'pusher_internal:subscription_succeeded');
    assert.equal((await reply('two')).event, 'pusher_internal:subscription_succeeded');
    assert.notEqual((await reply('three')).event, 'pusher_internal:subscription_succeeded');
    await new Promise((res) => setTimeout(res, 200));
    assert.equal(r.closed, null);
  });
});
