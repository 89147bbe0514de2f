// The processes of a cluster test: the private Redis/Valkey on the bridge and one pushbox per
// network namespace. run.sh builds the namespaces; this file starts, kills and restarts what runs
// in them, and writes every pid it starts to $PBT_PIDFILE so run.sh's trap can end them by pid.
import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import net from 'node:net';
import { APP } from './world.mjs';

export const NET = process.env.PBT_NET || '10.91.7';
export const DRIVER_IP = `${NET}.1`;
export const REDIS_IP = `${NET}.100`;
export const REDIS_PORT = 6390;
export const LEASE_SECS = Number(process.env.LEASE_SECS || 10);
export const HEARTBEAT_SECS = Number(process.env.HEARTBEAT_SECS || 1);
// `cluster.max_lag` of the nodes (default 10 s): 3 s so that the lag case makes a node lag past
// it with a few seconds of publishing.
export const MAX_LAG_SECS = Number(process.env.MAX_LAG_SECS || 3);
export const SINGLE = !!process.env.SINGLE;

const RUN_DIR = process.env.PBT_RUN_DIR || fs.mkdtempSync('/tmp/pbt-run-');
const PIDFILE = process.env.PBT_PIDFILE;
const PUSHBOX_BIN = process.env.PUSHBOX_BIN;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function rememberPid(pid) {
  if (PIDFILE && pid) fs.appendFileSync(PIDFILE, `${pid}\n`);
}

/** Run a command to completion (bounded); resolves {code, stdout, stderr}. */
export function run(cmd, args, timeoutMs = 10000) {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ code: err ? (err.code ?? 1) : 0, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

function waitExit(child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => { clearTimeout(t); resolve(true); });
  });
}

export function httpGet(url, timeoutMs = 2000) {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: 0, body: String(e.message) }));
  });
}

// ------------------------------------------------------------------------------------------------
// Redis / Valkey
// ------------------------------------------------------------------------------------------------

/** The private engine: redis-server or valkey-server, same flags, its own directory. */
export class Engine {
  constructor(kind = process.env.ENGINE || 'redis', bin = process.env.ENGINE_BIN || 'redis-server') {
    this.kind = kind;
    this.bin = bin;
    this.dir = path.join(RUN_DIR, 'redis');
    fs.mkdirSync(this.dir, { recursive: true });
    this.child = null;
    this.aof = true;
    this.url = `redis://${REDIS_IP}:${REDIS_PORT}`;
  }

  async start({ aof = this.aof } = {}) {
    this.aof = aof;
    // Someone else on our address would answer in our place (a leftover of an earlier run).
    const stale = await this.cli(['PING'], 1000);
    if (stale.ok) throw new Error(`something already answers on ${REDIS_IP}:${REDIS_PORT}; stop it first`);
    // The settings the cluster needs (README): AOF everysec, never evict.
    const args = [
      '--port', String(REDIS_PORT), '--bind', REDIS_IP, '--protected-mode', 'no',
      '--dir', this.dir, '--save', '', '--appendonly', aof ? 'yes' : 'no', '--appendfsync', 'everysec',
      '--maxmemory-policy', 'noeviction', '--daemonize', 'no', '--logfile', path.join(this.dir, 'server.log'),
    ];
    this.child = spawn(this.bin, args, { stdio: 'ignore' });
    rememberPid(this.child.pid);
    const deadline = Date.now() + 10000;
    while (Date.now() < deadline) {
      if (this.child.exitCode !== null) throw new Error(`${this.kind} exited at start: ${this.logTail()}`);
      const r = await this.cli(['PING'], 1000);
      if (r.ok && r.reply === 'PONG') {
        const pid = Number((await this.info('server')).process_id);
        if (pid !== this.child.pid) throw new Error(`${REDIS_IP}:${REDIS_PORT} is answered by pid ${pid}, not by the ${this.kind} just started (${this.child.pid})`);
        return;
      }
      await sleep(100);
    }
    throw new Error(`${this.kind} did not answer PING within 10 s: ${this.logTail()}`);
  }

  async kill9() {
    if (!this.child) return;
    this.child.kill('SIGKILL');
    await waitExit(this.child, 5000);
    this.child = null;
  }

  logTail() {
    try { return fs.readFileSync(path.join(this.dir, 'server.log'), 'utf8').slice(-1500); } catch { return '(no log)'; }
  }

  /** One command over RESP on a fresh TCP connection; {ok, reply} (reply: string, number, array). */
  cli(argv, timeoutMs = 2000) {
    return respCommand(REDIS_IP, REDIS_PORT, argv, timeoutMs);
  }

  async info(section) {
    const r = await this.cli(['INFO', section]);
    const out = {};
    if (!r.ok || typeof r.reply !== 'string') return out;
    for (const line of r.reply.split('\r\n')) {
      const i = line.indexOf(':');
      if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
    }
    return out;
  }
}

function encodeResp(argv) {
  let s = `*${argv.length}\r\n`;
  for (const a of argv) s += `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`;
  return s;
}

/** Parse one RESP2 reply from buf at i; returns [value, next] or null if incomplete. */
function parseResp(buf, i = 0) {
  const nl = buf.indexOf('\r\n', i);
  if (nl < 0) return null;
  const t = String.fromCharCode(buf[i]);
  const head = buf.toString('utf8', i + 1, nl);
  if (t === '+') return [head, nl + 2];
  if (t === '-') return [{ error: head }, nl + 2];
  if (t === ':') return [Number(head), nl + 2];
  if (t === '$') {
    const n = Number(head);
    if (n < 0) return [null, nl + 2];
    if (buf.length < nl + 2 + n + 2) return null;
    return [buf.toString('utf8', nl + 2, nl + 2 + n), nl + 2 + n + 2];
  }
  if (t === '*') {
    const n = Number(head);
    if (n < 0) return [null, nl + 2];
    const arr = [];
    let j = nl + 2;
    for (let k = 0; k < n; k++) {
      const r = parseResp(buf, j);
      if (!r) return null;
      arr.push(r[0]);
      j = r[1];
    }
    return [arr, j];
  }
  return [{ error: `unknown RESP type ${t}` }, buf.length];
}

export function respCommand(host, port, argv, timeoutMs = 2000) {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    let buf = Buffer.alloc(0);
    const done = (v) => { clearTimeout(t); sock.destroy(); resolve(v); };
    const t = setTimeout(() => done({ ok: false, reply: 'timeout' }), timeoutMs);
    sock.on('connect', () => sock.write(encodeResp(argv)));
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      const r = parseResp(buf);
      if (r) done({ ok: !(r[0] && r[0].error), reply: r[0] && r[0].error ? r[0].error : r[0] });
    });
    sock.on('error', (e) => done({ ok: false, reply: e.message }));
  });
}

// ------------------------------------------------------------------------------------------------
// pushbox nodes
// ------------------------------------------------------------------------------------------------

const NODE_DEFS = [
  { name: 'a', ns: 'pbt-a', ip: `${NET}.11`, port: 7011 },
  { name: 'b', ns: 'pbt-b', ip: `${NET}.12`, port: 7012 },
  { name: 'c', ns: 'pbt-c', ip: `${NET}.13`, port: 7013 },
];

export class Node {
  constructor(def, { engine, webhookUrl }) {
    Object.assign(this, def);
    this.engine = engine;
    this.webhookUrl = webhookUrl;
    this.dir = path.join(RUN_DIR, `node-${def.name}`);
    this.stateDir = path.join(this.dir, 'state');
    fs.mkdirSync(this.stateDir, { recursive: true });
    this.configPath = path.join(this.dir, 'pushbox.toml');
    this.logPath = path.join(this.dir, 'pushbox.log');
    this.child = null;
    this.host = this.ip;
    this.base = `http://${this.ip}:${this.port}`;
    this.apps = { main: APP };
    this.starts = 0;
  }

  config() {
    const cluster = SINGLE ? '' : `
[cluster]
redis_url = "${this.engine.url}"
key_prefix = "pbt"
node_name = "${this.name}"
lease = "${LEASE_SECS}s"
heartbeat = "${HEARTBEAT_SECS}s"
max_lag = "${MAX_LAG_SECS}s"
`;
    return `state_dir = "${this.stateDir}"

[server]
host = "${this.ip}"
port = ${this.port}
activity_timeout = 30
# Every client comes from the driver's one address.
max_connections_per_ip = 0

[webhooks]
batch_ms = 10
backoff_initial_ms = 200
backoff_max_ms = 1000
${cluster}
[[apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
max_presence_members = 100
client_event_rate = 100
webhook_url = "${this.webhookUrl}"
`;
  }

  async start() {
    fs.writeFileSync(this.configPath, this.config());
    const env = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (!/^(REVERB_|PUSHER_|PUSHBOX_)/.test(k)) env[k] = v;
    }
    env.PUSHBOX_LOG = process.env.NODE_LOG || 'info';
    env.RUST_LOG = env.PUSHBOX_LOG;
    fs.appendFileSync(this.logPath, `\n---- start ${++this.starts} at ${new Date().toISOString()}\n`);
    const fd = fs.openSync(this.logPath, 'a');
    // `ip netns exec` enters the namespace and execs pushbox: the pid is pushbox's.
    this.child = spawn('ip', ['netns', 'exec', this.ns, PUSHBOX_BIN, 'serve', '--config', this.configPath], {
      env, stdio: ['ignore', fd, fd],
    });
    fs.closeSync(fd);
    rememberPid(this.child.pid);
    const deadline = Date.now() + 20000;
    let last = '';
    while (Date.now() < deadline) {
      if (this.child.exitCode !== null) throw new Error(`node ${this.name} exited at start; log:\n${this.logTail()}`);
      const r = await httpGet(`${this.base}/up`, 1000);
      if (r.status === 200) return;
      last = `${r.status} ${r.body}`;
      await sleep(150);
    }
    throw new Error(`node ${this.name}: /up not 200 within 20 s (last: ${last}); log:\n${this.logTail()}`);
  }

  async kill9() {
    if (!this.child) return;
    this.child.kill('SIGKILL');
    await waitExit(this.child, 5000);
    this.child = null;
  }

  async stop() {
    if (!this.child) return;
    this.child.kill('SIGTERM');
    if (!(await waitExit(this.child, 5000))) { this.child.kill('SIGKILL'); await waitExit(this.child, 3000); }
    this.child = null;
  }

  logTail(n = 3000) {
    try { return fs.readFileSync(this.logPath, 'utf8').slice(-n); } catch { return '(no log)'; }
  }

  up() { return httpGet(`${this.base}/up`, 2000); }

  /** The value of one metric line (first sample whose name and labels start with `prefix`). */
  async metric(prefix) {
    const r = await httpGet(`${this.base}/metrics`, 2000);
    if (r.status !== 200) return undefined;
    for (const line of r.body.split('\n')) {
      if (line.startsWith(prefix)) {
        const v = Number(line.slice(line.lastIndexOf(' ') + 1));
        if (!Number.isNaN(v)) return v;
      }
    }
    return undefined;
  }

  /** Cut this node from Redis only (HTTP from the driver still reaches it). */
  async blackhole() {
    const r = await run('ip', ['netns', 'exec', this.ns, 'ip', 'route', 'add', 'blackhole', `${REDIS_IP}/32`]);
    if (r.code !== 0) throw new Error(`blackhole on ${this.ns}: ${r.stderr}`);
  }

  async heal() {
    const r = await run('ip', ['netns', 'exec', this.ns, 'ip', 'route', 'del', 'blackhole', `${REDIS_IP}/32`]);
    if (r.code !== 0) throw new Error(`heal on ${this.ns}: ${r.stderr}`);
  }

  /**
   * Slow down what Redis sends to this node to `rate` (tc syntax, e.g. '1mbit'); everything else
   * on its link (the driver's HTTP, webhooks) keeps full speed. On the bridge side of its veth
   * (`pbtv-<name>`, in the root namespace): HTB classifies by source address, a TBF under the
   * slow class keeps its queue short (100 ms), so the node's other Redis commands (heartbeat,
   * presence) still get through. No netem here: the kernel of the test box has none.
   */
  async throttle(rate) {
    const dev = `pbtv-${this.name}`;
    const steps = [
      ['qdisc', 'add', 'dev', dev, 'root', 'handle', '1:', 'htb', 'default', '20', 'r2q', '1000'],
      ['class', 'add', 'dev', dev, 'parent', '1:', 'classid', '1:10', 'htb', 'rate', rate, 'ceil', rate],
      ['class', 'add', 'dev', dev, 'parent', '1:', 'classid', '1:20', 'htb', 'rate', '10gbit'],
      ['qdisc', 'add', 'dev', dev, 'parent', '1:10', 'handle', '10:', 'tbf', 'rate', rate, 'burst', '16k', 'latency', '100ms'],
      ['filter', 'add', 'dev', dev, 'parent', '1:', 'protocol', 'ip', 'prio', '1', 'u32', 'match', 'ip', 'src', `${REDIS_IP}/32`, 'flowid', '1:10'],
    ];
    for (const a of steps) {
      const r = await run('tc', a);
      if (r.code !== 0) {
        await this.unthrottle();
        throw new Error(`tc ${a.join(' ')}: ${r.stderr}`);
      }
    }
  }

  async unthrottle() {
    await run('tc', ['qdisc', 'del', 'dev', `pbtv-${this.name}`, 'root']);
  }
}

/** The three nodes (in SINGLE mode: one node, also answering as b and c). */
export function makeNodes(opts) {
  const defs = SINGLE ? [NODE_DEFS[0]] : NODE_DEFS;
  const nodes = defs.map((d) => new Node(d, opts));
  if (SINGLE) return { list: nodes, a: nodes[0], b: nodes[0], c: nodes[0] };
  return { list: nodes, a: nodes[0], b: nodes[1], c: nodes[2] };
}
