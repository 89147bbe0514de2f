// pusher_internal:subscription_count (app option subscription_count = true), seen through pusher-js.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../lib/server.mjs';
import { Clients, subscribe, collect, sleep, waitUntil } from '../lib/helpers.mjs';

let server, clients;

before(async () => {
  server = await startServer();
  clients = new Clients(server, null);
});
after(async () => { await clients?.closeAll(); await server?.stop(); });
afterEach(async () => { await clients.closeAll(); });

describe('subscription_count', () => {
  it('enabled app: subscribers see pusher:subscription_count follow joins and leaves', async () => {
    const a = await clients.pusher({ app: 'counted' });
    const cha = a.subscribe('stats');
    const counts = collect(cha, 'pusher:subscription_count');
    await subscribe(a, 'stats');
    const b = await clients.pusher({ app: 'counted' });
    const chb = b.subscribe('stats');
    const countsB = collect(chb, 'pusher:subscription_count');
    await subscribe(b, 'stats');
    await waitUntil(() => cha.subscriptionCount === 2, {
      what: `A sees subscription_count 2 (events: ${JSON.stringify(counts.map((c) => c.data))})`,
    });
    assert.deepEqual(counts.at(-1).data, { subscription_count: 2 });
    await waitUntil(() => chb.subscriptionCount === 2, { what: `B sees 2 (events: ${JSON.stringify(countsB.map((c) => c.data))})` });
    b.unsubscribe('stats');
    await waitUntil(() => cha.subscriptionCount === 1, { what: 'A sees 1 after B left' });
  });

  it('wire format: data is the string {"subscription_count":N}', async () => {
    const r = await clients.raw(server.apps.counted.key);
    await r.established();
    r.send({ event: 'pusher:subscribe', data: { channel: 'stats-wire', auth: '' } });
    const f = await r.event('pusher_internal:subscription_count');
    assert.equal(f.channel, 'stats-wire');
    assert.equal(typeof f.data, 'string');
    assert.deepEqual(JSON.parse(f.data), { subscription_count: 1 });
  });

  it('app without the option sends no subscription_count', async () => {
    const a = await clients.pusher();
    const ch = a.subscribe('plain');
    const counts = collect(ch, 'pusher:subscription_count');
    await subscribe(a, 'plain');
    const b = await clients.pusher();
    await subscribe(b, 'plain');
    await sleep(500);
    assert.equal(counts.length, 0);
  });
});
