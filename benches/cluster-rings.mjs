// What resume's rings cost a clustered node (benches/cluster.sh rings): every node keeps the last
// window of every channel's events, whether or not a client is on it. Publishes EVENTS events
// round-robin over CHANNELS channels (ring-0 … ring-{CHANNELS-1}) with PAYLOAD bytes of data
// through the official Node SDK (`pusher`, triggerBatch of 10), on loopback only, and prints one
// JSON line {events, channels, payload, seconds, failed}. Every request has a deadline.
//
//   node benches/cluster-rings.mjs --api http://127.0.0.1:P --app-id A --key K --secret S \
//        --events 20000 --channels 1000 --payload 200
import { createRequire } from 'node:module';

const require = createRequire(new URL('../tests/clients/package.json', import.meta.url));
const Pusher = require('pusher');

const args = Object.fromEntries(process.argv.slice(2).reduce((a, v, i, arr) => (v.startsWith('--') ? [...a, [v.slice(2), arr[i + 1]]] : a), []));
const api = new URL(args.api || '');
if (!/^127\.\d+\.\d+\.\d+$/.test(api.hostname)) {
  console.error(`loopback only: ${args.api}`);
  process.exit(2);
}
const events = Number(args.events || 20000);
const channels = Number(args.channels || 1000);
const payload = 'x'.repeat(Number(args.payload || 200));
const pusher = new Pusher({
  appId: args['app-id'], key: args.key, secret: args.secret,
  host: api.hostname, port: api.port, useTLS: false, timeout: 10000,
});

const started = process.hrtime.bigint();
let failed = 0;
const inFlight = new Set();
for (let i = 0; i < events; i += 10) {
  const batch = [];
  for (let j = i; j < Math.min(i + 10, events); j++) {
    batch.push({ channel: `ring-${j % channels}`, name: 'e', data: payload });
  }
  const p = pusher.triggerBatch(batch).then((r) => { if (r.status !== 200) failed += batch.length; })
    .catch(() => { failed += batch.length; })
    .finally(() => inFlight.delete(p));
  inFlight.add(p);
  if (inFlight.size >= 8) await Promise.race(inFlight);
}
await Promise.all(inFlight);
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
console.log(JSON.stringify({ events, channels, payload: payload.length, seconds: Math.round(seconds * 100) / 100, failed }));
