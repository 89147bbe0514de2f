// The users' story (shared/seed): Laravel Echo listens on private-company.1 for
// App\Events\MarketplaceSyncProgress, published the way Laravel's broadcaster publishes it.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../lib/server.mjs';
import {
  Clients, startAuthServer, makeSdk, subscribe, sleep, signedRequest, phpTriggerBody, SOCKET_ID_RE,
} from '../lib/helpers.mjs';

const EVENT = 'App\\Events\\MarketplaceSyncProgress';
const PAYLOAD = { companyId: 1, marketplaceAccountId: 1, status: 'progress', message: 'Test WebSocket', progress: 50 };

let server, auth, clients, sdk;

before(async () => {
  server = await startServer();
  auth = await startAuthServer(server);
  clients = new Clients(server, auth);
  sdk = makeSdk(server);
});
after(async () => { await clients?.closeAll(); await auth?.close(); await server?.stop(); });
afterEach(async () => { await clients.closeAll(); });

/** Echo.private('company.1').listen('MarketplaceSyncProgress', cb), resolved when subscribed. */
async function listen(echo) {
  const got = [];
  echo.private('company.1').listen('MarketplaceSyncProgress', (e) => got.push(e));
  await subscribe(echo.connector.pusher, 'private-company.1');
  return got;
}

async function waitGot(got, n = 1, timeout = 5000) {
  const deadline = Date.now() + timeout;
  while (got.length < n) {
    if (Date.now() > deadline) throw new Error(`listener got ${got.length} event(s), expected ${n}`);
    await sleep(20);
  }
}

/** What pusher-http-php ≥ 7.2 (Laravel's PusherBroadcaster) sends: one `channel`, PHP-encoded query. */
function phpBroadcast(socketId) {
  return signedRequest(server, {
    style: 'php',
    path: `/apps/${server.apps.main.id}/events`,
    body: phpTriggerBody('private-company.1', EVENT, PAYLOAD, socketId),
  });
}

for (const broadcaster of ['reverb', 'pusher']) {
  describe(`Laravel Echo, broadcaster '${broadcaster}'`, () => {
    it('window.getWebSocketState(): connected with a digits.digits socket id', async () => {
      const echo = await clients.echo({ broadcaster });
      assert.equal(echo.connectionStatus(), 'connected');
      assert.match(echo.socketId(), SOCKET_ID_RE);
    });

    it('MarketplaceSyncProgress published with the Node SDK reaches Echo.private(company.1).listen', async () => {
      const echo = await clients.echo({ broadcaster });
      const got = await listen(echo);
      await sdk.trigger('private-company.1', EVENT, PAYLOAD);
      await waitGot(got);
      assert.deepEqual(got[0], PAYLOAD);
    });

    it('MarketplaceSyncProgress published as the PHP SDK does (single "channel" key) reaches Echo', async () => {
      const echo = await clients.echo({ broadcaster });
      const got = await listen(echo);
      const res = await phpBroadcast();
      assert.equal(res.status, 200, `PHP SDK requires exactly 200; got ${res.status} ${res.text}`);
      assert.ok(res.json && typeof res.json === 'object' && !Array.isArray(res.json),
        `PHP SDK requires a JSON object body; got ${JSON.stringify(res.text)}`);
      await waitGot(got);
      assert.deepEqual(got[0], PAYLOAD);
    });

    it('broadcast(...)->toOthers(): socket_id from Echo.socketId() excludes that tab only', async () => {
      const me = await clients.echo({ broadcaster, user: '1' });
      const other = await clients.echo({ broadcaster, user: '2' });
      const mine = await listen(me);
      const theirs = await listen(other);
      const res = await phpBroadcast(me.socketId());
      assert.equal(res.status, 200, res.text);
      await waitGot(theirs);
      await sleep(300);
      assert.equal(mine.length, 0, 'the originating socket must be excluded');
    });
  });
}

describe('runbook checks', () => {
  it("subscribeToChannel('company.1') on a public channel and a test event", async () => {
    const echo = await clients.echo();
    const got = [];
    echo.channel('company.1').listen('MarketplaceSyncProgress', (e) => got.push(e));
    await subscribe(echo.connector.pusher, 'company.1');
    await sdk.trigger('company.1', EVENT, PAYLOAD);
    await waitGot(got);
    assert.deepEqual(got[0], PAYLOAD);
  });

  it('Echo.leave(company.1) stops delivery', async () => {
    const echo = await clients.echo();
    const got = await listen(echo);
    echo.leave('company.1');
    await sleep(300);
    await phpBroadcast();
    await sleep(500);
    assert.equal(got.length, 0);
  });
});
