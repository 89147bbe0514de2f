// One real round trip against a running pushbox over TLS, with the clients a user would use:
// pusher-js (node build) subscribes to a fresh channel over wss, the official `pusher` Node SDK
// publishes an event through the signed HTTP API over https, and the subscriber must receive it.
// Used by scripts/qemu-smoke.sh (qemu-user) and image/check.sh (the booted appliance image).
//
//   NODE_EXTRA_CA_CERTS=box.crt node tests/qemu/subscribe_publish.mjs
//
// Environment: PB_HOST (default 127.0.0.1), PB_TLS_PORT (required), PB_APP_ID, PB_APP_KEY,
// PB_APP_SECRET (required), PB_PLAIN_PORT (optional: also GET http://HOST:PORT/up),
// PB_TIMEOUT_MS (overall budget, default 60000; connection attempts are retried until then,
// because a booting box or qemu's port forward may refuse or reset the first ones).
// Certificates are verified against the system roots plus NODE_EXTRA_CA_CERTS; nothing is
// ever accepted unverified. Exit 0 on success, 1 with a message on failure.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import tls from 'node:tls';
import http from 'node:http';
import crypto from 'node:crypto';

const here = path.dirname(fileURLToPath(import.meta.url));
// The pinned client packages of the real-client suite (read-only).
const require = createRequire(path.join(here, '..', 'clients', 'package.json'));
const Pusher = require('pusher-js');
const PusherServer = require('pusher');

const env = process.env;
const host = env.PB_HOST || '127.0.0.1';
const tlsPort = Number(env.PB_TLS_PORT);
const plainPort = env.PB_PLAIN_PORT ? Number(env.PB_PLAIN_PORT) : null;
const appId = env.PB_APP_ID, key = env.PB_APP_KEY, secret = env.PB_APP_SECRET;
const budget = Number(env.PB_TIMEOUT_MS || 60000);
const t0 = Date.now();
const deadline = t0 + budget;

function fail(msg) {
  console.error(`subscribe_publish: FAIL: ${msg}`);
  process.exit(1);
}
if (!tlsPort || !appId || !key || !secret) fail('PB_TLS_PORT, PB_APP_ID, PB_APP_KEY and PB_APP_SECRET are required');
if (!env.NODE_EXTRA_CA_CERTS) console.error('subscribe_publish: note: NODE_EXTRA_CA_CERTS is not set; only system roots are trusted');

const ms = () => `${Date.now() - t0} ms`;
const log = (m) => console.log(`subscribe_publish: [${ms()}] ${m}`);
const sleep = (n) => new Promise((r) => setTimeout(r, n));
const left = () => deadline - Date.now();

// 1. A verified TLS handshake (retried while the box comes up): protocol and certificate.
async function tlsProbe() {
  let last;
  while (left() > 0) {
    try {
      return await new Promise((resolve, reject) => {
        const s = tls.connect({ host, port: tlsPort, timeout: 5000 }, () => {
          const c = s.getPeerCertificate();
          resolve({ proto: s.getProtocol(), cipher: s.getCipher().name, subject: c.subject && c.subject.CN, san: c.subjectaltname, fp: c.fingerprint256 });
          s.end();
        });
        s.on('error', reject);
        s.on('timeout', () => { s.destroy(); reject(new Error('TLS handshake timed out')); });
      });
    } catch (e) {
      last = e;
      // A certificate problem will not fix itself: report it at once.
      if (e.code && /CERT|SELF_SIGNED|ALTNAME|UNABLE_TO_VERIFY/.test(e.code)) fail(`TLS certificate not trusted: ${e.code}: ${e.message}`);
      await sleep(500);
    }
  }
  fail(`no TLS handshake with ${host}:${tlsPort} within ${budget} ms (last error: ${last && last.message})`);
}

function getUp() {
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port: plainPort, path: '/up', timeout: 5000 }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timed out')));
  });
}

// 2. pusher-js over wss, a fresh attempt each time until connected.
async function connect() {
  let last = 'no attempt';
  while (left() > 0) {
    const client = new Pusher(key, {
      cluster: '',
      wsHost: host,
      wssPort: tlsPort,
      forceTLS: true,
      enabledTransports: ['ws'],
      disableStats: true,
      activityTimeout: 30000,
    });
    const ok = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), Math.min(8000, Math.max(left(), 1)));
      client.connection.bind('state_change', (s) => { last = `${s.previous} -> ${s.current}`; });
      client.connection.bind('error', (e) => { last = JSON.stringify(e && (e.error || e)).slice(0, 300); });
      client.connection.bind('connected', () => { clearTimeout(timer); resolve(true); });
    });
    if (ok) return client;
    client.disconnect();
    await sleep(500);
  }
  fail(`pusher-js could not connect to wss://${host}:${tlsPort} within ${budget} ms (last: ${last})`);
}

const probe = await tlsProbe();
log(`TLS ok: ${probe.proto} ${probe.cipher}, CN=${probe.subject}, ${probe.san}, sha256 ${probe.fp}`);

if (plainPort) {
  let up, last;
  while (left() > 0) {
    try { up = await getUp(); if (up.status === 200) break; last = `HTTP ${up.status}`; } catch (e) { last = e.message; }
    await sleep(500);
  }
  if (!up || up.status !== 200) fail(`GET http://${host}:${plainPort}/up: ${last}`);
  log(`plain listener ok: GET /up -> ${up.status} ${up.body.trim()}`);
}

const client = await connect();
log(`pusher-js connected over wss, socket_id ${client.connection.socket_id}`);

const channelName = `smoke-${crypto.randomBytes(4).toString('hex')}`;
const channel = client.subscribe(channelName);
await new Promise((resolve) => {
  const timer = setTimeout(() => fail(`no pusher:subscription_succeeded for ${channelName}`), Math.max(Math.min(left(), 10000), 1));
  channel.bind('pusher:subscription_succeeded', () => { clearTimeout(timer); resolve(); });
  channel.bind('pusher:subscription_error', (e) => fail(`subscription_error: ${JSON.stringify(e)}`));
});
log(`subscribed to ${channelName}`);

const nonce = crypto.randomBytes(8).toString('hex');
const received = new Promise((resolve) => {
  const timer = setTimeout(() => fail(`event not received on ${channelName} within 10 s of publishing`), 10000);
  channel.bind('smoke-event', (data) => {
    if (data && data.nonce === nonce) { clearTimeout(timer); resolve(data); }
  });
});

const server = new PusherServer({ appId, key, secret, host, port: String(tlsPort), useTLS: true, timeout: 10000 });
let res;
try {
  res = await server.trigger(channelName, 'smoke-event', { nonce, text: 'hello from the pusher SDK' });
} catch (e) {
  fail(`HTTP API publish failed: ${e.status || ''} ${e.body || e.message}`);
}
if (res.status !== 200) fail(`HTTP API answered ${res.status}`);
log(`published through https://${host}:${tlsPort}/apps/${appId}/events -> ${res.status}`);

const data = await received;
log(`received smoke-event on ${channelName}: ${JSON.stringify(data)}`);
client.disconnect();
console.log(`subscribe_publish: PASS in ${ms()}`);
process.exit(0);
