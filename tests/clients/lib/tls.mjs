// TLS and lifecycle helpers for 13_tls and 14_restart (kept apart from server.mjs/helpers.mjs).
//
//   makeCert(dir)          `pushbox cert self-signed --host localhost --ip 127.0.0.1 --out dir`
//   spawnPushbox(...)      (server.mjs's) start `pushbox serve` on an existing config, wait for
//                          GET /up (plain or https), stop with SIGTERM; used to restart on the
//                          same port and state dir
//   startTlsServer(opts)   a private pushbox with [tls] on a free 127.0.0.1 port (plain listener
//                          beside it unless server.plain = false), apps as in server.mjs
//   runNodeChild(...)      run this file as a child node process (NODE_EXTRA_CA_CERTS must be set
//                          before node starts), collect the JSON line it prints
//
// As a child (`node lib/tls.mjs <scenario>` with TLS_SCENARIO={...} in the environment) it runs
// pusher-js / Laravel Echo / the Node SDK against the TLS port and prints one JSON line.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PUSHBOX_BIN, APPS, freePort, renderConfig, get, readTail, spawnPushbox } from './server.mjs';

// 13_tls and 14_restart take these from here.
export { get, spawnPushbox };

/** Writes pushbox.key / pushbox.crt into dir with pushbox's own generator; returns the paths. */
export function makeCert(dir, { hosts = ['localhost'], ips = ['127.0.0.1'] } = {}) {
  const args = ['cert', 'self-signed', '--out', dir];
  for (const h of hosts) args.push('--host', h);
  for (const ip of ips) args.push('--ip', ip);
  const out = execFileSync(PUSHBOX_BIN, args, { encoding: 'utf8', timeout: 10000 });
  return { cert: path.join(dir, 'pushbox.crt'), key: path.join(dir, 'pushbox.key'), output: out };
}

/**
 * A private pushbox with TLS: certificate from `pushbox cert self-signed`, [tls] on a free port of
 * 127.0.0.1. opts.server (e.g. {plain: false}), opts.apps overrides as in startServer().
 */
export async function startTlsServer(opts = {}) {
  const apps = {};
  for (const [name, app] of Object.entries(APPS)) apps[name] = { ...app, ...(opts.apps?.[name] || {}) };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pushbox-tls-'));
  const stateDir = path.join(dir, 'state');
  fs.mkdirSync(stateDir);
  const certDir = path.join(dir, 'cert');
  fs.mkdirSync(certDir);
  const cert = makeCert(certDir);
  const port = await freePort();
  const tlsPort = await freePort();
  const plain = opts.server?.plain !== false;
  const configPath = path.join(dir, 'pushbox.toml');
  const extraToml = ['[tls]', `cert = ${JSON.stringify(cert.cert)}`, `key = ${JSON.stringify(cert.key)}`,
    'host = "127.0.0.1"', `port = ${tlsPort}`].join('\n');
  fs.writeFileSync(configPath, renderConfig({ stateDir, port, server: opts.server, apps, extraToml }));
  const logPath = path.join(dir, 'pushbox.log');
  const ca = fs.readFileSync(cert.cert);
  const upUrl = plain ? `http://127.0.0.1:${port}/up` : `https://127.0.0.1:${tlsPort}/up`;
  const proc = await spawnPushbox({ configPath, stateDir, logPath, upUrl, ca });
  return {
    host: '127.0.0.1', port, tlsPort, plain, apps, dir, stateDir, configPath, logPath, proc,
    child: proc.child, certPath: cert.cert, keyPath: cert.key, certOutput: cert.output, ca,
    base: `http://127.0.0.1:${port}`,
    tlsBase: `https://localhost:${tlsPort}`,
    log: () => readTail(logPath),
    async stop() {
      const r = await proc.stop(3000);
      if (!process.env.KEEP_PUSHBOX_TMP) fs.rmSync(dir, { recursive: true, force: true });
      return r;
    },
  };
}

const SELF = fileURLToPath(import.meta.url);

/**
 * Runs `node lib/tls.mjs <scenario>` with TLS_SCENARIO=JSON(params) and the extra env (e.g.
 * NODE_EXTRA_CA_CERTS). Resolves with the last JSON line printed, plus {stderr, code}.
 */
export function runNodeChild(scenario, params, { env = {}, timeout = 30000 } = {}) {
  return new Promise((resolve, reject) => {
    const base = { ...process.env };
    delete base.NODE_EXTRA_CA_CERTS;
    delete base.NODE_TEST_CONTEXT; // the child is a plain script, not a node:test subprocess
    const child = spawn(process.execPath, [SELF, scenario], {
      env: { ...base, ...env, TLS_SCENARIO: JSON.stringify(params) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => (out += c));
    child.stderr.on('data', (c) => (err += c));
    const t = setTimeout(() => { child.kill('SIGKILL'); }, timeout);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(t);
      const lines = out.trim().split('\n').filter((l) => l.startsWith('{'));
      let result = null;
      try { result = JSON.parse(lines[lines.length - 1]); } catch { /* none */ }
      if (!result) {
        reject(new Error(`child ${scenario} printed no result (code ${code}, signal ${signal}); stdout:\n${out.slice(-2000)}\nstderr:\n${err.slice(-2000)}`));
        return;
      }
      resolve({ ...result, code, stderr: err });
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Child scenarios
// ---------------------------------------------------------------------------------------------

async function childMain(scenario) {
  const P = JSON.parse(process.env.TLS_SCENARIO);
  const h = await import('./helpers.mjs');
  const server = { host: '127.0.0.1', port: P.port, apps: P.apps };
  const res = { scenario, extraCa: process.env.NODE_EXTRA_CA_CERTS || null, steps: [] };
  const step = (name, data = {}) => res.steps.push({ name, ...data });
  const auth = await h.startAuthServer(server);
  const clients = [];
  const finish = async (ok, error) => {
    for (const c of clients) { try { c.disconnect(); } catch { /* ignore */ } }
    await auth.close();
    res.ok = ok;
    if (error) res.error = String(error && error.stack || error);
    process.stdout.write(JSON.stringify(res) + '\n');
    process.exit(0);
  };
  const hard = setTimeout(() => finish(false, 'child scenario timed out'), P.timeout || 25000);
  hard.unref();
  try {
    // The Node SDK over https with no agent: trust comes from NODE_EXTRA_CA_CERTS only.
    const sdk = h.makeSdk(server, 'main', { useTLS: true, host: P.wsHost, port: String(P.tlsPort) });
    const wsOpts = { forceTLS: true, wsHost: P.wsHost, wssPort: P.tlsPort, wsPort: P.closedPort };
    const urlOf = (p) => p.connection?.connection?.transport?.socket?.url
      || p.connection?.connection?.transport?.url || null;

    if (scenario === 'untrusted') {
      // pusher-js must not connect; the SDK must reject with a certificate error.
      const p = new h.Pusher(P.apps.main.key, h.pusherOptions(server, auth, wsOpts));
      clients.push(p);
      const states = [];
      p.connection.bind('state_change', ({ current }) => states.push(current));
      let connected = false;
      try { await h.waitConnected(p, P.waitMs || 4000); connected = true; } catch { /* expected */ }
      step('pusher-js', { connected, states, state: p.connection.state });
      try {
        await sdk.trigger('orders', 'x', {});
        step('sdk', { rejected: false });
      } catch (e) {
        step('sdk', { rejected: true, error: String(e && (e.code || e.message)), cause: String(e?.cause?.code || e?.error?.code || '') });
      }
      return finish(true);
    }

    // 1. pusher-js (node build), forceTLS, private channel through the ajax auth endpoint.
    const p = new h.Pusher(P.apps.main.key, h.pusherOptions(server, auth, wsOpts));
    clients.push(p);
    await h.waitConnected(p, 8000);
    step('pusher-js connected', { socketId: p.connection.socket_id, url: urlOf(p) });
    const ch = await h.subscribe(p, 'private-tls-orders');
    step('pusher-js subscribed', { channel: ch.name });
    const got = h.waitEvent(ch, 'order.paid');
    const trig = await sdk.trigger('private-tls-orders', 'order.paid', { id: 42, via: 'https' });
    step('sdk trigger', { status: trig.status });
    const ev = await got;
    step('pusher-js event', { data: ev.data });

    const info = await sdk.get({ path: '/channels', params: {} });
    step('sdk get /channels', { status: info.status, body: await info.json() });

    // 2. Laravel Echo, broadcaster reverb, forceTLS.
    const echoOpts = {
      broadcaster: 'reverb', key: P.apps.main.key,
      wsHost: P.wsHost, wsPort: P.closedPort, wssPort: P.tlsPort, forceTLS: true,
      enabledTransports: ['ws', 'wss'], disableStats: true,
      authEndpoint: auth.authEndpoint, auth: { headers: { 'X-User-Id': '7' } },
      Pusher: h.Pusher, withoutInterceptors: true,
    };
    const echo = new h.Echo(echoOpts);
    clients.push(echo.connector.pusher);
    await h.waitConnected(echo.connector.pusher, 8000);
    step('echo connected', { socketId: echo.socketId(), url: urlOf(echo.connector.pusher) });
    const echoGot = new Promise((resolve) => echo.private('company.1').listen('MarketplaceSyncProgress', resolve));
    await h.subscribe(echo.connector.pusher, 'private-company.1');
    await sdk.trigger('private-company.1', 'App\\Events\\MarketplaceSyncProgress', { companyId: 1, progress: 50 });
    const echoEv = await Promise.race([echoGot, h.sleep(5000).then(() => { throw new Error('Echo: no event within 5 s'); })]);
    step('echo event', { data: echoEv });
    return finish(true);
  } catch (e) {
    return finish(false, e);
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === SELF && process.argv[2]) {
  childMain(process.argv[2]);
}
