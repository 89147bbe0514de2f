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

function httpGet(url, timeoutMs) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

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
  const logFd = fs.openSync(logPath, 'a');

  // A clean environment: no Laravel/Pusher variables from the caller may leak into the app list.
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(REVERB_|PUSHER_|PUSHBOX_)/.test(k)) env[k] = v;
  }
  env.PUSHBOX_STATE_DIR = stateDir;
  env.RUST_LOG = env.RUST_LOG || 'info';

  const child = spawn(PUSHBOX_BIN, ['serve', '--config', configPath], {
    env, stdio: ['ignore', logFd, logFd],
  });
  fs.closeSync(logFd);
  let exited = null;
  child.on('exit', (code, signal) => { exited = { code, signal }; });

  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20000;
  let lastErr = null;
  for (;;) {
    if (exited) {
      throw new Error(`pushbox exited early (${JSON.stringify(exited)}); log:\n${readTail(logPath)}`);
    }
    try {
      const r = await httpGet(`${base}/up`, 1000);
      if (r.status === 200) break;
      lastErr = new Error(`GET /up -> ${r.status} ${r.body}`);
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`pushbox did not answer GET /up within 20 s (${lastErr}); log:\n${readTail(logPath)}`);
    }
    await sleep(100);
  }

  return {
    port, host: '127.0.0.1', base, apps, dir, stateDir, configPath, logPath, child,
    log: () => readTail(logPath),
    async stop() {
      if (exited) return;
      const done = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await done;
      clearTimeout(t);
      if (!process.env.KEEP_PUSHBOX_TMP) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

function readTail(p, n = 4000) {
  try {
    const s = fs.readFileSync(p, 'utf8');
    return s.slice(-n);
  } catch {
    return '(no log)';
  }
}
