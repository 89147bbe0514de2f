// The soak load for benches/soak.sh: a bad-but-ordinary day for a shop's pushbox, for DURATION
// seconds, then every client leaves.
//
// - WebSocket clients (the `ws` package, speaking the Pusher protocol as pusher-js does: pong on
//   ping, subscribe, presence with signed channel_data) ramp to CONNS over RAMP seconds, then
//   churn: CHURN_PER_SEC close and as many new ones open, every second.
// - A share (PRESENCE_SHARE) also joins one of 20 presence channels as one of 500 users, and
//   some of those leave and join again every second.
// - The `pusher` Node SDK publishes PUBLISH_PER_SEC events (1 KB) to the public channels, a batch
//   now and then, and asks for the channel list every 10 s.
// - A webhook receiver on HOOK_PORT answers 500 for FLIP_SECS, then 200 for FLIP_SECS, and so on:
//   pushbox's webhook queue fails, backs off and recovers, over and over.
//
// Prints one line of counters a minute and a last line starting with `done` as it exits.
import http from "node:http";
import crypto from "node:crypto";
import { createRequire } from "node:module";

const require = createRequire(process.env.CLIENTS_DIR + "/package.json");
const WebSocket = require("ws");
const Pusher = require("pusher");

const env = (k, d) => (process.env[k] === undefined ? d : Number(process.env[k]));
const PORT = env("PORT", 6500);
const HOOK_PORT = env("HOOK_PORT", 6501);
const DURATION = env("DURATION", 3600);
const CONNS = env("CONNS", 1000);
const RAMP = env("RAMP", 60);
const CHURN_PER_SEC = env("CHURN_PER_SEC", 10);
const PUBLISH_PER_SEC = env("PUBLISH_PER_SEC", 20);
const PRESENCE_SHARE = env("PRESENCE_SHARE", 0.2);
const FLIP_SECS = env("FLIP_SECS", 30);
const KEY = process.env.KEY, SECRET = process.env.SECRET, APP_ID = process.env.APP_ID;

const c = { opened: 0, closed: 0, failed: 0, events: 0, joined: 0, left: 0, published: 0,
  publishFailed: 0, hooks200: 0, hooks500: 0 };
const conns = new Set();
let stopping = false;

function sign(s) {
  return KEY + ":" + crypto.createHmac("sha256", SECRET).update(s).digest("hex");
}

function joinPresence(conn) {
  const ch = "presence-room-" + Math.floor(Math.random() * 20);
  const cd = JSON.stringify({ user_id: "u" + Math.floor(Math.random() * 500), user_info: { name: "soak" } });
  conn.presence = ch;
  conn.ws.send(JSON.stringify({ event: "pusher:subscribe",
    data: { channel: ch, auth: sign(`${conn.sid}:${ch}:${cd}`), channel_data: cd } }));
  c.joined++;
}

function open() {
  const ws = new WebSocket(`ws://127.0.0.1:${PORT}/app/${KEY}?protocol=7&client=js&version=8.6.0`);
  const conn = { ws, sid: null, presence: null };
  conns.add(conn);
  ws.on("message", (raw) => {
    const m = JSON.parse(raw.toString());
    if (m.event === "pusher:connection_established") {
      conn.sid = JSON.parse(m.data).socket_id;
      c.opened++;
      ws.send(JSON.stringify({ event: "pusher:subscribe",
        data: { channel: "soak-" + Math.floor(Math.random() * 50) } }));
      if (Math.random() < PRESENCE_SHARE) joinPresence(conn);
    } else if (m.event === "pusher:ping") {
      ws.send(JSON.stringify({ event: "pusher:pong", data: {} }));
    } else if (m.event === "soak") {
      c.events++;
    }
  });
  ws.on("error", () => { c.failed++; });
  ws.on("close", () => { conns.delete(conn); c.closed++; });
}

function churn() {
  if (stopping) return;
  const list = [...conns].filter((x) => x.sid); // established ones: closing one still connecting is an error
  for (let i = 0; i < CHURN_PER_SEC && list.length; i++) {
    list.splice(Math.floor(Math.random() * list.length), 1)[0].ws.close();
  }
  // Presence leaves and joins again.
  for (const conn of list.filter((x) => x.presence).slice(0, Math.ceil(CHURN_PER_SEC / 2))) {
    conn.ws.send(JSON.stringify({ event: "pusher:unsubscribe", data: { channel: conn.presence } }));
    conn.presence = null;
    c.left++;
  }
  for (const conn of list.filter((x) => x.sid && !x.presence).slice(0, Math.ceil(CHURN_PER_SEC / 2))) {
    if (Math.random() < PRESENCE_SHARE) joinPresence(conn);
  }
}

function ramp(elapsed) {
  if (stopping) return;
  const target = elapsed >= RAMP ? CONNS : Math.ceil((CONNS * elapsed) / RAMP);
  for (let n = conns.size; n < target; n++) open();
}

const pusher = new Pusher({ appId: APP_ID, key: KEY, secret: SECRET, host: "127.0.0.1", port: String(PORT), useTLS: false });
const pad = "x".repeat(1000);
let seq = 0;
function publish() {
  if (stopping) return;
  const n = seq++;
  const done = (p) => p.then((r) => { if (r.status === 200) c.published++; else c.publishFailed++; })
    .catch(() => { c.publishFailed++; });
  if (n % 50 === 0) {
    done(pusher.triggerBatch([0, 1, 2].map((i) => ({ channel: "soak-" + ((n + i) % 50), name: "soak", data: { n, pad } }))));
  } else {
    done(pusher.trigger("soak-" + (n % 50), "soak", { n, pad }));
  }
}

const hooks = http.createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    const failing = Math.floor(Date.now() / 1000 / FLIP_SECS) % 2 === 0;
    if (failing) c.hooks500++; else c.hooks200++;
    res.writeHead(failing ? 500 : 200, { "content-type": "application/json" });
    res.end("{}");
  });
});
hooks.listen(HOOK_PORT, "127.0.0.1");

const line = (what) => console.log(`${what} t=${Math.round((Date.now() - start) / 1000)}s open=${conns.size} ` +
  Object.entries(c).map(([k, v]) => `${k}=${v}`).join(" "));
const start = Date.now();
const ticks = [
  setInterval(() => { const e = (Date.now() - start) / 1000; ramp(e); if (e > RAMP) churn(); }, 1000),
  setInterval(publish, Math.max(1, Math.round(1000 / PUBLISH_PER_SEC))),
  setInterval(() => { pusher.get({ path: "/channels" }).catch(() => {}); }, 10000),
  setInterval(() => line("stats"), 60000),
];

setTimeout(async () => {
  stopping = true;
  ticks.forEach(clearInterval);
  for (const conn of conns) conn.ws.close();
  // Let the closes (and their leave webhooks) go through.
  await new Promise((r) => setTimeout(r, 5000));
  for (const conn of conns) conn.ws.terminate();
  line("done");
  hooks.closeAllConnections?.();
  hooks.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000);
}, DURATION * 1000);
