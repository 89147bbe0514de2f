// The test side of the resume suite (root namespace): the link (cut/heal), pushbox processes on
// the host end of the veth, the agent (clients inside the namespace, see agent.mjs), publishing
// through the signed HTTP API, /metrics, and the checks every case shares.
//
// tests/resume/run.sh creates the namespace and exports RESUME_NETNS, RESUME_NS_IF,
// RESUME_SERVER_IP and RESUME_CLIENT_IP; without them the tests refuse to run (they would test
// nothing).
import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { APPS, PUSHBOX_BIN, get, renderConfig, spawnPushbox } from '../../clients/lib/server.mjs';
import { signedRequest, sleep, WebSocket } from '../../clients/lib/helpers.mjs';

export { APPS, PUSHBOX_BIN, sleep };
const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..', '..');

export const NET = {
  ns: process.env.RESUME_NETNS,
  nsIf: process.env.RESUME_NS_IF,
  serverIp: process.env.RESUME_SERVER_IP,
  clientIp: process.env.RESUME_CLIENT_IP,
};
if (!NET.ns || !NET.nsIf || !NET.serverIp) {
  throw new Error('tests/resume needs its network namespace: run tests/resume/run.sh (root), not node --test directly');
}

const log = (...a) => process.stderr.write(`[resume ${new Date().toISOString().slice(11, 23)}] ${a.join(' ')}\n`);
export { log };

// ------------------------------------------------------------------------------------ the link

/** Wi-Fi drops: the namespace's end of the veth goes down, its routes with it. */
export function cut() {
  execFileSync('ip', ['netns', 'exec', NET.ns, 'ip', 'link', 'set', NET.nsIf, 'down']);
  log(`link ${NET.nsIf} DOWN`);
  return Date.now();
}

export function heal() {
  execFileSync('ip', ['netns', 'exec', NET.ns, 'ip', 'link', 'set', NET.nsIf, 'up']);
  log(`link ${NET.nsIf} UP`);
  return Date.now();
}

/** 128 random bits in hex: the token the issue tells users to put under wsPath. */
export const token = () => crypto.randomBytes(16).toString('hex');

// ------------------------------------------------------------------------------------ pushbox

/** GET url → {status, body}; rejects on network errors. */
export const httpGet = (url, timeoutMs = 1500) => get(url, { timeout: timeoutMs });

let nextPort = 7300 + (process.pid % 500) * 4;

/**
 * A pushbox on the host end of the veth, advertising activity_timeout 3 s (so a client notices a
 * cut within seconds; pusher-js then allows 3 s of silence + its pongTimeout 2 s). `env` adds PUSHBOX_RESUME_* variables (the way an operator would set them;
 * a binary without resume ignores unknown PUSHBOX_ variables). Restartable on the same port and
 * state directory.
 */
export async function startBox({ name, env = {}, server = {} }) {
  const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = fs.mkdtempSync(path.join(base, `pushbox-resume-${name}-`));
  const stateDir = path.join(dir, 'state');
  fs.mkdirSync(stateDir);
  const port = nextPort++;
  const configPath = path.join(dir, 'pushbox.toml');
  // pong_timeout stays pushbox's default (30 s): with 3 s, pushbox itself closed clients it had
  // pinged just before a 4 s cut (exp/offsets.mjs: every client of such a trial reconnected; the
  // 4 s case failed once in 14 runs). Cases that need pushbox to give up during a cut set it lower.
  const srv = { host: NET.serverIp, activity_timeout: 3, pong_timeout: 30, max_connections_per_ip: 0, ...server };
  fs.writeFileSync(configPath, renderConfig({ stateDir, port, server: srv, apps: APPS }));
  const logPath = path.join(dir, 'pushbox.log');
  const box = {
    name, port, host: NET.serverIp, apps: APPS, dir, stateDir, configPath, logPath, env,
    base: `http://${NET.serverIp}:${port}`,
    child: null, proc: null,
    log: (n = 6000) => { try { return fs.readFileSync(logPath, 'utf8').slice(-n); } catch { return '(no log)'; } },
  };
  box.start = async () => {
    box.proc = await spawnPushbox({
      configPath, stateDir, logPath, upUrl: `${box.base}/up`, env, pollMs: 50, label: `pushbox ${name}`,
    });
    box.child = box.proc.child;
    return box;
  };
  /** SIGTERM (pushbox's graceful stop: 4200 to every client), SIGKILL after `bound` ms. */
  box.stop = async (bound = 8000) => (box.proc ? box.proc.stop(bound) : null);
  box.remove = async () => {
    await box.stop(3000);
    if (!process.env.KEEP_PUSHBOX_TMP) fs.rmSync(dir, { recursive: true, force: true });
  };
  box.publish = (channel, data, { event = 'seq', socketId } = {}) => publish(box, channel, data, { event, socketId });
  box.metrics = () => metrics(box);
  // A box that does not come up is never handed to the caller's cleanup: remove it here, or
  // its directory stays behind in /dev/shm.
  await box.start().catch(async (e) => { await box.remove(); throw e; });
  return box;
}

/** POST /apps/{id}/events, signed like an SDK; resolves with the HTTP status (0 = no answer). */
export async function publish(box, channel, data, { event = 'seq', socketId } = {}) {
  const body = { name: event, channel, data: JSON.stringify(data) };
  if (socketId) body.socket_id = socketId;
  try {
    const r = await signedRequest(box, { path: `/apps/${APPS.main.id}/events`, body });
    return r.status;
  } catch {
    return 0;
  }
}

export async function terminateUser(box, userId) {
  const r = await signedRequest(box, { path: `/apps/${APPS.main.id}/users/${userId}/terminate_connections`, body: {} });
  return r.status;
}

/** /metrics as {"name{labels}": value}; {} when unreachable. */
export async function metrics(box) {
  try {
    const r = await httpGet(`${box.base}/metrics`, 3000);
    const m = {};
    for (const line of r.body.split('\n')) {
      if (!line || line.startsWith('#')) continue;
      const i = line.lastIndexOf(' ');
      m[line.slice(0, i)] = Number(line.slice(i + 1));
    }
    return m;
  } catch {
    return {};
  }
}

/** Sum of a metric over its label sets (`pushbox_resume_failed_total` → every reason). */
export function metricSum(m, name) {
  let s = 0;
  let seen = false;
  for (const [k, v] of Object.entries(m)) {
    if (k === name || k.startsWith(`${name}{`)) { s += v; seen = true; }
  }
  return seen ? s : undefined;
}

/**
 * Does this binary take a WebSocket on `/r/<token>/app/<key>` (pusher-js wsPath)? A pushbox without
 * resume refuses that upgrade (404); one with it answers pusher:connection_established.
 */
export function routesResumePath(box) {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://${box.host}:${box.port}/r/${token()}/app/${APPS.main.key}?protocol=7&client=js&version=8.6.0&flash=false`);
    const done = (v) => { clearTimeout(t); try { ws.terminate(); } catch { /* ignore */ } resolve(v); };
    const t = setTimeout(() => done(false), 3000);
    ws.on('message', (m) => done(String(m).includes('pusher:connection_established')));
    ws.on('unexpected-response', () => done(false));
    ws.on('error', () => done(false));
  });
}

// ------------------------------------------------------------------------------------ the agent

const AGENT = path.join(here, 'agent.mjs');

export class Agent {
  static async start() {
    const a = new Agent();
    const env = { ...process.env };
    delete env.NODE_TEST_CONTEXT; // the agent is a plain script, not a node:test subprocess
    a.child = spawn('ip', ['netns', 'exec', NET.ns, process.execPath, AGENT], { env, stdio: ['pipe', 'pipe', 'inherit'] });
    a.child.on('exit', (code, signal) => { a.exited = { code, signal }; for (const w of a.pending.values()) w.reject(new Error(`agent exited ${JSON.stringify(a.exited)}`)); });
    readline.createInterface({ input: a.child.stdout }).on('line', (l) => a.onLine(l));
    await a.call('init', { app: APPS.main });
    return a;
  }

  constructor() {
    this.seq = 0;
    this.pending = new Map();
    this.events = [];
    this.exited = null;
  }

  onLine(line) {
    let o;
    try { o = JSON.parse(line); } catch { log(`agent: ${line}`); return; }
    if (o.id !== undefined) {
      const w = this.pending.get(o.id);
      this.pending.delete(o.id);
      if (w) { if (o.ok) w.resolve(o.result); else w.reject(new Error(o.error)); }
      return;
    }
    this.events.push(o);
    if (o.ev === 'log' || (process.env.RESUME_VERBOSE && o.ev !== 'msg')) log(`agent ${JSON.stringify(o)}`);
  }

  call(op, args = {}, timeout = 20000) {
    if (this.exited) return Promise.reject(new Error('agent exited'));
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => { this.pending.delete(id); reject(new Error(`agent ${op} timed out after ${timeout} ms`)); }, timeout);
      this.pending.set(id, {
        resolve: (v) => { clearTimeout(t); resolve(v); },
        reject: (e) => { clearTimeout(t); reject(e); },
      });
      this.child.stdin.write(JSON.stringify({ id, op, ...args }) + '\n');
    });
  }

  /** A pusher-js instance in the namespace connected to `box` (token under wsPath/httpPath). */
  pusher(name, box, opts = {}) {
    return this.call('pusher', { name, key: APPS.main.key, host: box.host, port: box.port, ...opts });
  }

  async subscribe(client, channel, { timeout = 10000 } = {}) {
    const from = this.events.length;
    await this.call('subscribe', { client, channel });
    await this.waitFor(() => this.events.slice(from).some((e) => e.ev === 'msg' && e.client === client
      && e.channel === channel && e.event === 'pusher:subscription_succeeded'), { timeout, what: `${client} subscribed to ${channel}` });
  }

  /** Every event `client` saw on `channel` ({event, data, t, socketId}), in arrival order. */
  msgs(client, channel) {
    return this.events.filter((e) => e.ev === 'msg' && e.client === client && e.channel === channel);
  }

  /** The `n` of every `seq` event, in arrival order (duplicates kept: that is what we count). */
  ns(client, channel, event = 'seq') {
    return this.msgs(client, channel).filter((e) => e.event === event).map((e) => e.data && e.data.n);
  }

  states(client) {
    return this.events.filter((e) => e.ev === 'state' && e.client === client);
  }

  /** Socket ids `client` was connected with, in order. */
  socketIds(client) {
    return this.states(client).filter((s) => s.current === 'connected').map((s) => s.socketId);
  }

  async waitFor(pred, { timeout = 10000, interval = 25, what = 'condition' } = {}) {
    const deadline = Date.now() + timeout;
    for (;;) {
      if (pred()) return true;
      if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
      await sleep(interval);
    }
  }

  /** Like waitFor, but says false instead of throwing: one case's failure must not hide the others. */
  async waitSoft(pred, opts) {
    try { return await this.waitFor(pred, opts); } catch { return false; }
  }

  async close() {
    if (this.exited) return;
    await this.call('exit', {}, 5000).catch(() => {});
    const t = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await new Promise((r) => (this.exited ? r() : this.child.once('exit', r)));
    clearTimeout(t);
  }
}

// ------------------------------------------------------------------------------------ checks

/** [1,2,3,5,5,6] → "1-3,5,5-6": long sequences stay readable in a failure message. */
export function runs(arr) {
  const parts = [];
  for (let i = 0; i < arr.length;) {
    let j = i;
    while (j + 1 < arr.length && arr[j + 1] === arr[j] + 1) j++;
    parts.push(j > i ? `${arr[i]}-${arr[j]}` : `${arr[i]}`);
    i = j + 1;
  }
  return parts.join(',');
}

/** "every n exactly once, in order": a message that names what is missing and what is doubled. */
export function describeSeq(got, expected) {
  const count = new Map();
  for (const n of got) count.set(n, (count.get(n) || 0) + 1);
  const missing = expected.filter((n) => !count.has(n));
  const dups = [...count].filter(([, c]) => c > 1).map(([n, c]) => `${n}×${c}`);
  const extra = [...count.keys()].filter((n) => !expected.includes(n));
  return `missing [${runs(missing)}], duplicated [${dups.join(',')}], unexpected [${runs(extra)}]; `
    + `got [${runs(got)}], expected [${runs(expected)}]`;
}

export const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
