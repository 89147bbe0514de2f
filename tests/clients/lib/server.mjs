// Starts a private pushbox process for one test file.
//
// Every test file calls startServer() once (in `before`) and server.stop() in `after`.
// The server gets: a free loopback port, a temp state dir (PUSHBOX_STATE_DIR), and a temp
// TOML config (docs/CONFIG.md) with these apps:
//
//   main      id 1001  key main-key      secret main-secret      defaults (subscription_count off)
//   counted   id 1002  key counted-key   secret counted-secret   subscription_count = true,
//                                                                 max_presence_members = 2
//   disabled  id 1003  key disabled-key  secret disabled-secret  enabled = false
//
// Per-file overrides: startServer({ server: {activity_timeout: 2}, apps: {main: {client_event_rate: 5}} }).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import http from 'node:http';
import https from 'node:https';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..', '..');
export const PUSHBOX_BIN =
  process.env.PUSHBOX_BIN || path.join(REPO_ROOT, 'target', 'debug', 'pushbox');

export const APPS = {
  main: { id: '1001', key: 'main-key', secret: 'main-secret' },
  counted: {
    id: '1002', key: 'counted-key', secret: 'counted-secret',
    subscription_count: true, max_presence_members: 2,
  },
  disabled: { id: '1003', key: 'disabled-key', secret: 'disabled-secret', enabled: false },
};

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function tomlValue(v) {
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return '[' + v.map(tomlValue).join(', ') + ']';
  return String(v);
}

export function renderConfig({ stateDir, port, server = {}, apps, extraToml = '' }) {
  const lines = [`state_dir = ${tomlValue(stateDir)}`, '', '[server]'];
  const srv = { host: '127.0.0.1', port, ...server };
  for (const [k, v] of Object.entries(srv)) lines.push(`${k} = ${tomlValue(v)}`);
  for (const app of Object.values(apps)) {
    lines.push('', '[[apps]]');
    for (const [k, v] of Object.entries(app)) lines.push(`${k} = ${tomlValue(v)}`);
  }
  return lines.join('\n') + '\n' + (extraToml ? `\n${extraToml}\n` : '');
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(REVERB_|PUSHER_|PUSHBOX_)/.test(k)) env[k] = v;
  }
  env.RUST_LOG = env.RUST_LOG || 'info';
  return { ...env, ...extra };
}

/** GET url (http or https with `ca`) → {status, body}; rejects on network/TLS errors. */
export function get(url, { ca, timeout = 2000 } = {}) {
  const mod = url.startsWith('https:') ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.get(url, { timeout, ...(ca ? { ca } : {}) }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body, socket: res.socket }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

export function readTail(p, n = 4000) {
  try { return fs.readFileSync(p, 'utf8').slice(-n); } catch { return '(no log)'; }
}

/**
 * Starts `pushbox serve --config configPath` (state dir from the config and PUSHBOX_STATE_DIR;
 * `env` adds variables, e.g. PUSHBOX_RESUME_*), appending to logPath, and waits until upUrl
 * answers 200 (bounded by `within` ms, polled every `pollMs`). The one launcher of the node
 * suites: startServer below, tls.mjs, tests/resume/lib/harness.mjs.
 */
export async function spawnPushbox({
  configPath, stateDir, logPath, upUrl, ca, env = {}, within = 20000, pollMs = 100, label = 'pushbox',
}) {
  const logFd = fs.openSync(logPath, 'a');
  const child = spawn(PUSHBOX_BIN, ['serve', '--config', configPath], {
    env: cleanEnv({ PUSHBOX_STATE_DIR: stateDir, ...env }), stdio: ['ignore', logFd, logFd],
  });
  fs.closeSync(logFd);
  const proc = { child, exited: null, logPath };
  proc.exitedPromise = new Promise((r) => child.once('exit', (code, signal) => {
    proc.exited = { code, signal, at: Date.now() };
    r(proc.exited);
  }));
  const deadline = Date.now() + within;
  let lastErr;
  for (;;) {
    if (proc.exited) throw new Error(`${label} exited early (${JSON.stringify(proc.exited)}); log:\n${readTail(logPath)}`);
    try {
      const r = await get(upUrl, { ca, timeout: 1000 });
      if (r.status === 200) break;
      lastErr = new Error(`GET /up -> ${r.status}`);
    } catch (e) { lastErr = e; }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${label} did not answer ${upUrl} within ${within} ms (${lastErr}); log:\n${readTail(logPath)}`);
    }
    await sleep(pollMs);
  }
  /** SIGTERM; resolves with {code, signal, ms}; SIGKILL after `bound` ms (then `killed: true`). */
  proc.stop = async (bound = 8000) => {
    if (proc.exited) return { ...proc.exited, ms: 0 };
    const t0 = Date.now();
    child.kill('SIGTERM');
    let killed = false;
    const t = setTimeout(() => { killed = true; child.kill('SIGKILL'); }, bound);
    const ex = await proc.exitedPromise;
    clearTimeout(t);
    return { ...ex, ms: Date.now() - t0, killed };
  };
  return proc;
}

export async function startServer(opts = {}) {
  if (!fs.existsSync(PUSHBOX_BIN)) {
    throw new Error(`pushbox binary not found at ${PUSHBOX_BIN}; run cargo build in ${REPO_ROOT}`);
  }
  const apps = {};
  for (const [name, app] of Object.entries(APPS)) apps[name] = { ...app, ...(opts.apps?.[name] || {}) };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pushbox-clients-'));
  const stateDir = path.join(dir, 'state');
  fs.mkdirSync(stateDir);
  const port = await freePort();
  const configPath = path.join(dir, 'pushbox.toml');
  fs.writeFileSync(configPath, renderConfig({ stateDir, port, server: opts.server, apps, extraToml: opts.extraToml }));
  const logPath = path.join(dir, 'pushbox.log');
  const base = `http://127.0.0.1:${port}`;
  const proc = await spawnPushbox({ configPath, stateDir, logPath, upUrl: `${base}/up` });
  const { child } = proc;
  return {
    port, host: '127.0.0.1', base, apps, dir, stateDir, configPath, logPath, child,
    log: () => readTail(logPath),
    async stop() {
      await proc.stop(3000);
      if (!process.env.KEEP_PUSHBOX_TMP) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

