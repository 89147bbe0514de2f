// A real browser (Debian's chromium, driven by playwright-core) loads a Laravel Echo + pusher-js
// page with enabledTransports ['ws','wss','xhr_streaming','xhr_polling'] and listens with
// Echo.private('company.1').listen('MarketplaceSyncProgress', …):
//   (a) WebSocket works: the page connects over ws and gets the event;
//   (b) a proxy in front of pushbox refuses WebSocket upgrades: the same page, unchanged, falls
//       back on its own to the HTTP transports and still gets the event;
//   (c) the proxy also buffers whole responses (so streaming never delivers a byte): the same
//       page ends up on xhr_polling and still gets the event.
// Screenshots go to artifacts/ at the repository root.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer, REPO_ROOT } from '../../clients/lib/server.mjs';
import { makeSdk, startPageServer, startNoUpgradeProxy } from '../lib/harness.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run',
];
const ARTIFACTS = path.join(REPO_ROOT, 'artifacts');
const EVENT = 'App\\Events\\MarketplaceSyncProgress';
const PAYLOAD = { companyId: 1, marketplaceAccountId: 1, status: 'progress', message: 'Test WebSocket', progress: 50 };

let server, sdk, page, proxy, bufferingProxy;
const tmpDirs = [];

before(async () => {
  server = await startServer();
  sdk = makeSdk(server);
  page = await startPageServer(sdk);
  proxy = await startNoUpgradeProxy(server.port);
  bufferingProxy = await startNoUpgradeProxy(server.port, { buffer: true });
  fs.mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  await proxy?.close();
  await bufferingProxy?.close();
  await page?.close();
  await server?.stop();
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

/** Opens the page in a fresh chromium profile, waits for the subscription, publishes, returns what the page saw. */
async function run(pushboxPort, shot) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pushbox-chromium-'));
  tmpDirs.push(userDataDir);
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 900, height: 420 },
  });
  const logs = [];
  try {
    const tab = context.pages()[0] || await context.newPage();
    tab.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
    tab.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
    const url = `${page.base}/?key=${server.apps.main.key}&host=127.0.0.1&port=${pushboxPort}`;
    await tab.goto(url);
    try {
      await tab.waitForFunction(() => window.subscribed === true, null, { timeout: 40000 });
    } catch (e) {
      const states = await tab.evaluate(() => window.states).catch(() => null);
      throw new Error(`page never subscribed (states ${JSON.stringify(states)}); console:\n${logs.join('\n')}\n${server.log()}`);
    }
    await sdk.trigger('private-company.1', EVENT, PAYLOAD);
    await tab.waitForFunction(() => window.received.length > 0, null, { timeout: 15000 });
    const seen = await tab.evaluate(() => ({
      received: window.received, transport: window.transport(), states: window.states,
      socketId: window.Echo.socketId(),
    }));
    await tab.screenshot({ path: path.join(ARTIFACTS, shot) });
    return seen;
  } finally {
    await context.close();
  }
}

describe('Laravel Echo in chromium', () => {
  it('(a) WebSocket works: connects over ws and receives MarketplaceSyncProgress', async () => {
    const seen = await run(server.port, 'browser-echo-websocket.png');
    assert.equal(seen.transport, 'ws');
    const { transport, ...event } = seen.received[0];
    assert.deepEqual(event, PAYLOAD);
    assert.equal(transport, 'ws');
    assert.match(seen.socketId, /^\d+\.\d+$/);
  });

  it('(b) WebSocket blocked by a proxy: the same page falls back to HTTP and receives it', async () => {
    const authBefore = page.authRequests.length;
    const t0 = Date.now();
    const seen = await run(proxy.port, 'browser-echo-fallback.png');
    const took = Date.now() - t0;
    assert.ok(proxy.stats.upgradesRefused >= 1, `the page tried WebSocket first (${JSON.stringify(proxy.stats)})`);
    assert.ok(['xhr_streaming', 'xhr_polling'].includes(seen.transport), `transport ${seen.transport}`);
    const { transport, ...event } = seen.received[0];
    assert.deepEqual(event, PAYLOAD);
    assert.equal(transport, seen.transport);
    // The browser's CORS preflight and the fallback requests all went through the proxy.
    const f = proxy.stats.forwarded;
    assert.ok((f['POST xhr_streaming'] || 0) + (f['POST xhr'] || 0) >= 1, JSON.stringify(f));
    assert.ok((f['POST xhr_send'] || 0) >= 1, `subscribe went through xhr_send: ${JSON.stringify(f)}`);
    assert.ok(Object.keys(f).some((k) => k.startsWith('OPTIONS')), `a CORS preflight: ${JSON.stringify(f)}`);
    assert.ok(page.authRequests.length > authBefore, 'the private channel was authorized');
    console.log(`fallback: ${seen.transport} after ${took} ms; proxy ${JSON.stringify(proxy.stats)}`);
  });

  it('(c) a buffering proxy that also blocks WebSocket: the same page lands on xhr_polling', async () => {
    const t0 = Date.now();
    const seen = await run(bufferingProxy.port, 'browser-echo-polling.png');
    const took = Date.now() - t0;
    assert.ok(bufferingProxy.stats.upgradesRefused >= 1, JSON.stringify(bufferingProxy.stats));
    assert.equal(seen.transport, 'xhr_polling');
    const { transport, ...event } = seen.received[0];
    assert.deepEqual(event, PAYLOAD);
    assert.equal(transport, 'xhr_polling');
    console.log(`buffering proxy: ${seen.transport} after ${took} ms; proxy ${JSON.stringify(bufferingProxy.stats)}`);
  });
});
