// The pushbox console in headless Debian chromium: sign in, watch a pusher-js client's
// connection and channel appear, send a test event from the form, see it reach that client and
// the event stream, and check that a payload with <script> is shown as text. Screenshot saved
// to $ARTIFACTS/console.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import Pusher from 'pusher-js';

const BIN = process.env.PUSHBOX_BIN;
const ARTIFACTS = process.env.ARTIFACTS || path.resolve('../../artifacts');
const PASSWORD = 'console-browser-test-pw';
const APP = { id: '4242', key: 'browser-key', secret: 'browser-secret' };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

async function waitPort(port, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const ok = await new Promise((r) => {
      const c = net.connect(port, '127.0.0.1', () => { c.end(); r(true); });
      c.on('error', () => r(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`pushbox did not listen on ${port}`);
    await sleep(50);
  }
}

let dir, server, port, browser, page, client, serverLog = '';
const pageErrors = [];

before(async () => {
  assert.ok(BIN, 'PUSHBOX_BIN not set (run tests/console-browser/run.sh)');
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pushbox-console-'));
  port = await freePort();
  const cfg = path.join(dir, 'pushbox.toml');
  fs.writeFileSync(cfg, `[server]\nhost = "127.0.0.1"\nport = ${port}\n[console]\npassword = "${PASSWORD}"\n` +
    `[[apps]]\nid = "${APP.id}"\nkey = "${APP.key}"\nsecret = "${APP.secret}"\n`);
  const env = { ...process.env, PUSHBOX_STATE_DIR: path.join(dir, 'state'), PUSHBOX_LOG: 'info' };
  for (const k of ['REVERB_APP_ID', 'PUSHER_APP_ID', 'NOTIFY_SOCKET', 'LISTEN_FDS', 'LISTEN_PID']) delete env[k];
  server = spawn(BIN, ['serve', '--config', cfg], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  server.stderr.on('data', (d) => { serverLog += d; });
  await waitPort(port);
  browser = await chromium.launchPersistentContext(path.join(dir, 'profile'), {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
    viewport: { width: 1200, height: 1000 },
  });
  page = browser.pages()[0] || await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
});

after(async () => {
  if (client) client.disconnect();
  if (browser) await browser.close();
  if (server) server.kill('SIGTERM');
  await sleep(200);
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('console: sign in, live connection, test event reaches the client and the stream as text', async () => {
  const base = `http://127.0.0.1:${port}`;
  await page.goto(`${base}/console`);
  await page.waitForSelector('#login-form', { state: 'visible' });

  // A wrong password is refused on the page.
  await page.fill('#password', 'not the password');
  await page.click('#login-form button[type=submit]');
  await page.waitForFunction(() => document.getElementById('login-error').textContent.includes('Wrong password'));

  await page.fill('#password', PASSWORD);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#dash', { state: 'visible' });
  // The session cookie is HttpOnly: the page's script cannot read it.
  assert.equal(await page.evaluate(() => document.cookie), '');
  const cookies = await browser.cookies(`${base}/console`);
  const c = cookies.find((k) => k.name === 'pushbox_console');
  assert.ok(c && c.httpOnly && c.sameSite === 'Strict', JSON.stringify(cookies));

  // The page's own pusher-js connection, like the seed's getWebSocketState().
  await page.waitForFunction(() => window.getWebSocketState().connected === true, null, { timeout: 10000 });
  const ws = await page.evaluate(() => window.getWebSocketState());
  assert.match(ws.socketId, /^\d+\.\d+$/);
  await page.waitForFunction(() => document.getElementById('ws-state').textContent.startsWith('connected: true'));
  await page.waitForFunction(() => document.getElementById('conn-total').textContent === '1');

  // A test client (pusher-js in Node) connects and subscribes: it appears on the page.
  client = new Pusher(APP.key, { cluster: 'mt1', wsHost: '127.0.0.1', wsPort: port, forceTLS: false,
    enabledTransports: ['ws'], disableStats: true });
  const channel = client.subscribe('company.1');
  await new Promise((resolve, reject) => {
    channel.bind('pusher:subscription_succeeded', resolve);
    setTimeout(() => reject(new Error('client did not subscribe')), 10000);
  });
  await page.waitForFunction(() => document.getElementById('conn-total').textContent === '2', null, { timeout: 5000 });
  assert.equal(await page.textContent('#conn-ws'), '2');
  assert.equal(await page.textContent('#conn-http'), '0');
  await page.waitForSelector('#channels tr[data-channel="company.1"]');
  assert.equal(await page.textContent('#channels tr[data-channel="company.1"] .subs'), '1');

  // Send a test event from the form; the payload tries to inject HTML.
  const data = JSON.stringify({ status: 'progress', progress: 50,
    message: '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">' });
  const received = new Promise((resolve, reject) => {
    channel.bind('MarketplaceSyncProgress', resolve);
    setTimeout(() => reject(new Error('the client did not get the test event')), 10000);
  });
  await page.fill('#send-channel', 'company.1');
  await page.fill('#send-event', 'MarketplaceSyncProgress');
  await page.fill('#send-data', data);
  await page.click('#send-form button[type=submit]');
  await page.waitForFunction(() => document.getElementById('send-result').textContent === 'sent');
  const got = await received;
  assert.equal(got.progress, 50);
  assert.equal(got.message, '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">');

  // In the event stream, as text: no element was created from the payload.
  const item = '#events li[data-event="MarketplaceSyncProgress"]';
  await page.waitForSelector(item, { timeout: 5000 });
  assert.equal(await page.textContent(`${item} .ev-data`), data);
  assert.equal(await page.$$eval('#events script, #events img', (els) => els.length), 0);
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.match(await page.textContent(`${item} .meta`), /company\.1 · reached 1/);

  // Filters hide what does not match and show it again.
  await page.fill('#filter-channel', 'no-such-channel');
  assert.equal(await page.isHidden(item), true);
  await page.fill('#filter-channel', 'company');
  await page.fill('#filter-event', 'Marketplace');
  assert.equal(await page.isVisible(item), true);
  await page.fill('#filter-event', '');
  await page.fill('#filter-channel', '');

  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, 'console.png'), fullPage: true });

  // The strict Content-Security-Policy did not block anything the page needs.
  assert.deepEqual(pageErrors.filter((e) => !e.includes('401')), [], pageErrors.join('\n'));
  assert.ok(!serverLog.includes(PASSWORD), 'password in the server log');
});
