// The clients of the reconnect storm, run inside the clients' network namespace (see run.sh):
// STORM_N pusher-js instances (node build), each with its own wsPath token, pongTimeout 2000,
// subscribed to one channel. Prints {"ev":"ready"} when all are subscribed. After the test writes
// "heal <epoch ms>" on stdin (the link is back), it watches every client until it has a new socket
// id, is subscribed again and holds every one of the STORM_EVENTS missed events (n = 1..E), then
// prints one summary line {"ev":"summary", …} and exits (bounded by STORM_TIMEOUT_MS).
import readline from 'node:readline';
import { Pusher } from '../../tests/clients/lib/helpers.mjs';
import crypto from 'node:crypto';

const N = Number(process.env.STORM_N || 1000);
const E = Number(process.env.STORM_EVENTS || 100);
const TIMEOUT = Number(process.env.STORM_TIMEOUT_MS || 120000);
const HOST = process.env.STORM_HOST;
const PORT = Number(process.env.STORM_PORT);
const KEY = process.env.STORM_KEY;
const CHANNEL = 'storm';
const TOKENS = process.env.STORM_TOKENS !== '0';

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const clients = [];
let healAt = null;

function makeClient(i) {
  const o = {
    cluster: '', wsHost: HOST, wsPort: PORT, wssPort: PORT, forceTLS: false,
    enabledTransports: ['ws'], disableStats: true, pongTimeout: 2000,
  };
  if (TOKENS) o.wsPath = `/r/${crypto.randomBytes(16).toString('hex')}`;
  const p = new Pusher(KEY, o);
  const c = { i, p, ids: [], subs: [], got: new Map(), dups: 0, resubAt: null, caughtUpAt: null, reconnectAt: null };
  p.connection.bind('connected', () => {
    c.ids.push(p.connection.socket_id);
    if (healAt && c.ids.length >= 2 && !c.reconnectAt) c.reconnectAt = Date.now();
  });
  const ch = p.subscribe(CHANNEL);
  ch.bind('pusher:subscription_succeeded', () => {
    c.subs.push(Date.now());
    if (healAt && c.ids.length >= 2 && !c.resubAt) c.resubAt = Date.now();
  });
  ch.bind('seq', (d) => {
    const n = d && d.n;
    if (c.got.has(n)) c.dups += 1;
    c.got.set(n, Date.now());
    if (!c.caughtUpAt && c.ids.length >= 2 && n >= 1 && n <= E && c.got.size >= E && [...Array(E).keys()].every((k) => c.got.has(k + 1))) {
      c.caughtUpAt = Date.now();
    }
  });
  return c;
}

async function main() {
  // Connect in batches so the setup is not itself a storm.
  for (let i = 0; i < N; i++) {
    clients.push(makeClient(i));
    if (i % 50 === 49) await sleep(100);
  }
  const t0 = Date.now();
  while (clients.some((c) => c.subs.length === 0)) {
    if (Date.now() - t0 > 60000) {
      out({ ev: 'error', error: `only ${clients.filter((c) => c.subs.length).length}/${N} subscribed after 60 s` });
      process.exit(1);
    }
    await sleep(100);
  }
  out({ ev: 'ready', n: N });
}

function summary(done) {
  const rel = (t) => (t == null ? null : t - healAt);
  const pct = (arr, p) => {
    const s = arr.filter((x) => x != null).sort((a, b) => a - b);
    if (!s.length) return null;
    return s[Math.min(s.length - 1, Math.floor(p * s.length))];
  };
  const resub = clients.map((c) => rel(c.resubAt));
  const caught = clients.map((c) => rel(c.caughtUpAt));
  const firstReconnect = Math.min(...clients.map((c) => c.reconnectAt ?? Infinity));
  out({
    ev: 'summary', done, n: N, events: E,
    resubscribed: resub.filter((x) => x != null).length,
    caughtUp: caught.filter((x) => x != null).length,
    missingTotal: clients.reduce((s, c) => s + [...Array(E).keys()].filter((k) => !c.got.has(k + 1)).length, 0),
    duplicatesTotal: clients.reduce((s, c) => s + c.dups, 0),
    firstReconnectMs: Number.isFinite(firstReconnect) ? firstReconnect - healAt : null,
    resubscribedMs: { p50: pct(resub, 0.5), p99: pct(resub, 0.99), max: pct(resub, 1) },
    caughtUpMs: { p50: pct(caught, 0.5), p99: pct(caught, 0.99), max: pct(caught, 1) },
    // From the first client back to the last one live again: the box's part of the storm, without
    // pusher-js's own retry timer (which decides when the storm starts).
    stormMs: Number.isFinite(firstReconnect) && caught.every((x) => x != null)
      ? Math.max(...clients.map((c) => c.caughtUpAt)) - firstReconnect : null,
    resubscribeStormMs: Number.isFinite(firstReconnect) && resub.every((x) => x != null)
      ? Math.max(...clients.map((c) => c.resubAt)) - firstReconnect : null,
  });
}

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const [cmd, arg] = line.trim().split(/\s+/);
  if (cmd !== 'heal') return;
  healAt = Number(arg);
  const deadline = Date.now() + TIMEOUT;
  const live = () => clients.every((c) => (TOKENS ? c.caughtUpAt : c.resubAt));
  while (!live() && Date.now() < deadline) await sleep(50);
  await sleep(1000); // late duplicates
  summary(live());
  for (const c of clients) c.p.disconnect();
  setTimeout(() => process.exit(0), 200);
});

main().catch((e) => { out({ ev: 'error', error: String(e && e.stack || e) }); process.exit(1); });
