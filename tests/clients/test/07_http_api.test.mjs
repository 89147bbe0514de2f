// HTTP API through the official Node SDK (pusher 5.x) plus hand-signed requests for error paths.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../lib/server.mjs';
import {
  Clients, PusherServer, startAuthServer, makeSdk, subscribe, waitEvent, collect, sleep, waitUntil, signedRequest,
} from '../lib/helpers.mjs';

let server, auth, clients, sdk, appPath;

before(async () => {
  server = await startServer();
  auth = await startAuthServer(server);
  clients = new Clients(server, auth);
  sdk = makeSdk(server);
  appPath = `/apps/${server.apps.main.id}`;
});
after(async () => { await clients?.closeAll(); await auth?.close(); await server?.stop(); });
afterEach(async () => { await clients.closeAll(); });

async function expectStatus(promise, status) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof PusherServer.RequestError, `expected RequestError, got ${e}`);
    assert.equal(e.status, status, `status ${e.status}, body ${e.body}`);
    return e;
  }
  assert.fail(`expected HTTP ${status}, request succeeded`);
}

describe('trigger', () => {
  it('single channel: 200 with a JSON object body, event delivered', async () => {
    const p = await clients.pusher();
    const ch = await subscribe(p, 'api-one');
    const got = waitEvent(ch, 'hello');
    const res = await sdk.trigger('api-one', 'hello', { a: 1 });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') || '', /^application\/json/);
    const body = await res.json();
    assert.ok(body && typeof body === 'object' && !Array.isArray(body), 'body must be a JSON object');
    assert.deepEqual((await got).data, { a: 1 });
  });

  it('multiple channels in one call', async () => {
    const p = await clients.pusher();
    const c1 = await subscribe(p, 'api-m1');
    const c2 = await subscribe(p, 'private-api-m2');
    const g1 = waitEvent(c1, 'multi');
    const g2 = waitEvent(c2, 'multi');
    await sdk.trigger(['api-m1', 'private-api-m2'], 'multi', 'plain string');
    assert.equal((await g1).data, 'plain string');
    assert.equal((await g2).data, 'plain string');
  });

  it('socket_id exclusion ({socket_id} param): the sender is skipped, others receive', async () => {
    const p1 = await clients.pusher();
    const p2 = await clients.pusher();
    const c1 = await subscribe(p1, 'api-excl');
    const c2 = await subscribe(p2, 'api-excl');
    const seen1 = collect(c1, 'ev');
    const g2 = waitEvent(c2, 'ev');
    await sdk.trigger('api-excl', 'ev', { x: 1 }, { socket_id: p1.connection.socket_id });
    await g2;
    await sleep(300);
    assert.equal(seen1.length, 0, 'excluded socket must not receive the event');
  });

  it('socket_id exclusion across multiple channels', async () => {
    const p1 = await clients.pusher();
    const p2 = await clients.pusher();
    const a1 = await subscribe(p1, 'ex-a');
    const b1 = await subscribe(p1, 'ex-b');
    const a2 = await subscribe(p2, 'ex-a');
    const seen = [collect(a1, 'ev'), collect(b1, 'ev')];
    const g = waitEvent(a2, 'ev');
    await sdk.trigger(['ex-a', 'ex-b'], 'ev', {}, { socket_id: p1.connection.socket_id });
    await g;
    await sleep(300);
    assert.equal(seen[0].length + seen[1].length, 0);
  });

  it('info=user_count,subscription_count in the trigger response', async () => {
    const p1 = await clients.pusher({ user: '1' });
    const p2 = await clients.pusher({ user: '2' });
    await subscribe(p1, 'presence-api-info');
    await subscribe(p2, 'presence-api-info');
    await subscribe(p1, 'api-info');
    const res = await sdk.trigger(['presence-api-info', 'api-info'], 'ev', {}, { info: 'user_count,subscription_count' });
    const body = await res.json();
    assert.equal(body.channels['presence-api-info'].user_count, 2, JSON.stringify(body));
    assert.equal(body.channels['api-info'].subscription_count, 1, JSON.stringify(body));
    assert.equal(body.channels['api-info'].user_count, undefined, 'user_count only for presence channels');
  });
});

describe('triggerBatch', () => {
  it('delivers every item in order', async () => {
    const p = await clients.pusher();
    const c1 = await subscribe(p, 'batch-1');
    const c2 = await subscribe(p, 'private-batch-2');
    const g1 = waitEvent(c1, 'b1');
    const g2 = waitEvent(c2, 'b2');
    const res = await sdk.triggerBatch([
      { channel: 'batch-1', name: 'b1', data: { n: 1 } },
      { channel: 'private-batch-2', name: 'b2', data: JSON.stringify({ n: 2 }) },
    ]);
    assert.equal(res.status, 200);
    assert.deepEqual((await g1).data, { n: 1 });
    assert.deepEqual((await g2).data, { n: 2 });
  });

  it('batch item socket_id exclusion and info', async () => {
    const p1 = await clients.pusher({ user: '1' });
    const p2 = await clients.pusher({ user: '2' });
    const c1 = await subscribe(p1, 'presence-batch');
    const c2 = await subscribe(p2, 'presence-batch');
    const seen1 = collect(c1, 'x');
    const g2 = waitEvent(c2, 'x');
    const res = await sdk.triggerBatch([
      { channel: 'presence-batch', name: 'x', data: '{}', socket_id: p1.connection.socket_id, info: 'user_count' },
      { channel: 'batch-none', name: 'y', data: '{}' },
    ]);
    const body = await res.json();
    await g2;
    await sleep(300);
    assert.equal(seen1.length, 0);
    assert.ok(Array.isArray(body.batch), JSON.stringify(body));
    assert.equal(body.batch.length, 2);
    assert.equal(body.batch[0].user_count, 2);
  });

  it('more than 10 items is 400 and nothing is delivered', async () => {
    const p = await clients.pusher();
    const ch = await subscribe(p, 'batch-big');
    const seen = collect(ch, 'e');
    const batch = Array.from({ length: 11 }, (_, i) => ({ channel: 'batch-big', name: 'e', data: String(i) }));
    await expectStatus(sdk.triggerBatch(batch), 400);
    await sleep(300);
    assert.equal(seen.length, 0);
  });
});

describe('channel queries', () => {
  it('GET /channels lists occupied channels only; presence filter with user_count', async () => {
    const p1 = await clients.pusher({ user: '1' });
    const p2 = await clients.pusher({ user: '2' });
    await subscribe(p1, 'q-public');
    await subscribe(p1, 'presence-q');
    await subscribe(p2, 'presence-q');
    const all = await (await sdk.get({ path: '/channels' })).json();
    assert.ok(all.channels['q-public'], JSON.stringify(all));
    assert.ok(all.channels['presence-q'], JSON.stringify(all));
    assert.equal(all.channels['never-used'], undefined);
    const pres = await (await sdk.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })).json();
    assert.deepEqual(Object.keys(pres.channels), ['presence-q']);
    assert.equal(pres.channels['presence-q'].user_count, 2);
  });

  it('GET /channels with info=user_count and no presence- filter is 400', async () => {
    await expectStatus(sdk.get({ path: '/channels', params: { info: 'user_count' } }), 400);
  });

  it('GET /channels/{name} with info user_count,subscription_count', async () => {
    const p1 = await clients.pusher({ user: '1' });
    const p2 = await clients.pusher({ user: '1' }); // same user twice: 1 user, 2 subscriptions
    const p3 = await clients.pusher({ user: '2' });
    for (const p of [p1, p2, p3]) await subscribe(p, 'presence-info');
    const info = await (await sdk.get({ path: '/channels/presence-info', params: { info: 'user_count,subscription_count' } })).json();
    assert.equal(info.occupied, true);
    assert.equal(info.user_count, 2);
    if ('subscription_count' in info) assert.equal(info.subscription_count, 3);

    await subscribe(p1, 'info-public');
    await subscribe(p2, 'info-public');
    const pub = await (await sdk.get({ path: '/channels/info-public', params: { info: 'subscription_count' } })).json();
    assert.deepEqual(pub, { occupied: true, subscription_count: 2 });
  });

  it('GET /channels/{name} of an empty channel is {"occupied":false}', async () => {
    const info = await (await sdk.get({ path: '/channels/nobody-here' })).json();
    assert.deepEqual(info, { occupied: false });
  });

  it('user_count on a non-presence channel is 400', async () => {
    await expectStatus(sdk.get({ path: '/channels/info-public', params: { info: 'user_count' } }), 400);
  });

  it('GET /channels/{presence}/users lists distinct user ids; non-presence is 400', async () => {
    const p1 = await clients.pusher({ user: 'a' });
    const p2 = await clients.pusher({ user: 'a' });
    const p3 = await clients.pusher({ user: 'b' });
    for (const p of [p1, p2, p3]) await subscribe(p, 'presence-users');
    const res = await (await sdk.get({ path: '/channels/presence-users/users' })).json();
    assert.deepEqual(res.users.map((u) => u.id).sort(), ['a', 'b']);
    await subscribe(p1, 'not-presence');
    await expectStatus(sdk.get({ path: '/channels/not-presence/users' }), 400);
  });

  it('terminateUserConnections answers 200 with a JSON object', async () => {
    const res = await sdk.terminateUserConnections('nobody');
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.ok(body && typeof body === 'object' && !Array.isArray(body));
  });
});

describe('API error paths', () => {
  it('wrong secret: RequestError with status 401', async () => {
    const bad = makeSdk(server, 'main', { secret: 'wrong-secret' });
    await expectStatus(bad.trigger('x', 'y', {}), 401);
    await expectStatus(bad.get({ path: '/channels' }), 401);
  });

  it('wrong key: 401', async () => {
    const res = await signedRequest(server, { path: `${appPath}/events`, key: 'other-key', body: { name: 'e', channels: ['c'], data: '{}' } });
    assert.equal(res.status, 401, res.text);
  });

  it('stale timestamp (older than 600 s) is 401, a skew within 600 s is accepted', async () => {
    const now = Math.floor(Date.now() / 1000);
    const body = { name: 'e', channels: ['c'], data: '{}' };
    const old = await signedRequest(server, { path: `${appPath}/events`, body, timestamp: now - 700 });
    assert.equal(old.status, 401, old.text);
    const future = await signedRequest(server, { path: `${appPath}/events`, body, timestamp: now + 700 });
    assert.equal(future.status, 401, future.text);
    const ok = await signedRequest(server, { path: `${appPath}/events`, body, timestamp: now - 500 });
    assert.equal(ok.status, 200, ok.text);
  });

  it('body_md5 that does not match the body is 401', async () => {
    const res = await signedRequest(server, {
      path: `${appPath}/events`, body: { name: 'e', channels: ['c'], data: '{}' },
      sendBody: JSON.stringify({ name: 'e', channels: ['c'], data: '{"tampered":1}' }),
    });
    assert.equal(res.status, 401, res.text);
  });

  it('data over 10 KB is 413 (Node SDK surfaces RequestError 413)', async () => {
    await expectStatus(sdk.trigger('big', 'e', 'x'.repeat(10 * 1024 + 1)), 413);
    // The Node SDK sends string data as is: exactly 10240 bytes is within the limit.
    const exact = await sdk.trigger('big', 'e', 'x'.repeat(10 * 1024));
    assert.equal(exact.status, 200);
  });

  it('more than 100 channels is 400', async () => {
    const channels = Array.from({ length: 101 }, (_, i) => `c${i}`);
    const res = await signedRequest(server, { path: `${appPath}/events`, body: { name: 'e', channels, data: '{}' } });
    assert.equal(res.status, 400, res.text);
    const ok = await signedRequest(server, { path: `${appPath}/events`, body: { name: 'e', channels: channels.slice(0, 100), data: '{}' } });
    assert.equal(ok.status, 200, ok.text);
  });

  it('missing name, or neither channel nor channels, is 400', async () => {
    const r1 = await signedRequest(server, { path: `${appPath}/events`, body: { channels: ['c'], data: '{}' } });
    assert.equal(r1.status, 400, r1.text);
    const r2 = await signedRequest(server, { path: `${appPath}/events`, body: { name: 'e', data: '{}' } });
    assert.equal(r2.status, 400, r2.text);
  });

  it('unknown app id is 404; disabled app is 403', async () => {
    const ghost = { id: '999999', key: 'ghost-key', secret: 'ghost-secret' };
    const r1 = await signedRequest(server, { app: ghost, path: '/apps/999999/events', body: { name: 'e', channels: ['c'], data: '{}' } });
    assert.equal(r1.status, 404, r1.text);
    const dis = server.apps.disabled;
    const r2 = await signedRequest(server, { app: 'disabled', path: `/apps/${dis.id}/events`, body: { name: 'e', channels: ['c'], data: '{}' } });
    assert.equal(r2.status, 403, r2.text);
  });

  it('PHP-style percent-encoded query (info=user_count%2Csubscription_count) verifies', async () => {
    const p = await clients.pusher({ user: '1' });
    await subscribe(p, 'presence-php');
    const res = await signedRequest(server, {
      method: 'GET', path: `${appPath}/channels/presence-php`, style: 'php',
      query: { info: 'user_count,subscription_count' },
    });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.user_count, 1);
  });

  it('Python-style GET carrying body_md5 of the empty body verifies', async () => {
    const res = await signedRequest(server, { method: 'GET', path: `${appPath}/channels`, bodyMd5OnGet: true });
    assert.equal(res.status, 200, res.text);
  });
});
