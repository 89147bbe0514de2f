// Debian's chromium (driven by playwright-core from tests/browser/node_modules) inside the
// clients' network namespace, loading page/echo.html: Laravel Echo + pusher-js (web build) with a
// wsPath token, the shop's page and /broadcasting/auth served from the namespace's loopback.
// Loaded by agent.mjs (so chromium's sockets cross the veth the test cuts, and the browser sees
// the link go down as a real device would: navigator.onLine flips, pusher-js pings, gives up).
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(here, '..', '..', '..');
const MODULES = path.join(REPO, 'tests', 'browser', 'node_modules');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run',
];

const FILES = {
  '/': [path.join(here, '..', 'page', 'echo.html'), 'text/html; charset=utf-8'],
  '/vendor/pusher.js': [path.join(MODULES, 'pusher-js', 'dist', 'web', 'pusher.js'), 'text/javascript'],
  '/vendor/echo.iife.js': [path.join(MODULES, 'laravel-echo', 'dist', 'echo.iife.js'), 'text/javascript'],
};

function pageServer(signer, deny, out) {
  const srv = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (req.method === 'POST' && url.pathname === '/broadcasting/auth') {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        const p = new URLSearchParams(body);
        const channel = p.get('channel_name');
        out({ ev: 'auth', client: 'browser', channel, socketId: p.get('socket_id') });
        if (deny.has(channel)) {
          res.writeHead(403, { 'Content-Type': 'application/json' });
          return res.end('{"message":"Forbidden"}');
        }
        const user = p.get('user_id') || '1';
        const presence = channel.startsWith('presence-') ? { user_id: user, user_info: { name: `User ${user}` } } : undefined;
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(signer.authorizeChannel(p.get('socket_id'), channel, presence)));
      });
      return;
    }
    const file = FILES[url.pathname];
    if (req.method === 'GET' && file) {
      res.writeHead(200, { 'Content-Type': file[1], 'Cache-Control': 'no-store' });
      fs.createReadStream(file[0]).pipe(res);
      return;
    }
    res.writeHead(404);
    res.end('not found');
  });
  return new Promise((r) => srv.listen(0, '127.0.0.1', () => r(srv)));
}

export async function openBrowser({ host, port, key, notoken = false, query = '', signer, deny, out }) {
  const { chromium } = await import(pathToFileURL(path.join(MODULES, 'playwright-core', 'index.mjs')).href);
  const srv = await pageServer(signer, deny, out);
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pushbox-resume-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 800, height: 600 },
  });
  const page = context.pages()[0] || await context.newPage();
  await page.exposeFunction('report', (o) => out({ client: 'browser', ...o }));
  page.on('console', (m) => { if (m.type() === 'error') out({ ev: 'log', level: 'info', text: `chromium console: ${m.text()}` }); });
  page.on('pageerror', (e) => out({ ev: 'log', level: 'error', text: `chromium pageerror: ${e.message}` }));
  const url = `http://127.0.0.1:${srv.address().port}/?key=${key}&host=${host}&port=${port}${notoken ? '&notoken=1' : ''}${query}`;
  await page.goto(url);
  return {
    info: { url },
    /** Leave the page (chromium closes its WebSocket with 1001, going away), or come back to it. */
    goto: (where) => page.goto(where === 'page' ? url : where),
    async state() {
      return page.evaluate(() => ({
        received: window.received,
        states: window.states,
        shown: [...document.querySelectorAll('#events li')].map((li) => li.textContent),
        wsPath: window.Echo.connector.pusher.config.wsPath,
      }));
    },
    shot: (file) => page.screenshot({ path: file }),
    async close() {
      await context.close().catch(() => {});
      srv.closeAllConnections?.();
      srv.close();
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}
