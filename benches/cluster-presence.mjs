// Presence load for benches/cluster.sh (pbload has no presence mode): raw WebSockets on loopback,
// presence auth signed here with the app secret (what Laravel's /broadcasting/auth returns).
//
//   node benches/cluster-presence.mjs rate --urls ws://127.0.0.1:P/app/KEY[,ws://…] --secret S \
//        --workers 30 --duration 10
//     each worker holds one connection (round-robin over the URLs) and loops
//     subscribe presence-bench-{w%10} as user w → subscription_succeeded → unsubscribe;
//     prints one JSON line {cycles, per_s, p50_ms, p99_ms, client_cpu_s}.
//   node benches/cluster-presence.mjs hold --urls … --secret S --members 1000 --hold 5
//     joins N distinct users (one connection each) to presence-mem, prints "joined N" on stderr,
//     holds, closes; prints one JSON line. Every wait is bounded.
import crypto from 'node:crypto';
import { WebSocket } from '../tests/clients/lib/helpers.mjs';

const args = Object.fromEntries(process.argv.slice(3).reduce((a, v, i, arr) => (v.startsWith('--') ? [...a, [v.slice(2), arr[i + 1]]] : a), []));
const mode = process.argv[2];
const urls = String(args.urls || '').split(',').filter(Boolean);
const secret = args.secret;
if (!urls.length || !secret || !['rate', 'hold'].includes(mode)) {
  console.error('usage: cluster-presence.mjs rate|hold --urls ws://127.0.0.1:P/app/KEY,... --secret S [...]');
  process.exit(2);
}
for (const u of urls) if (!/^ws:\/\/127\.\d+\.\d+\.\d+:/.test(u)) { console.error(`loopback only: ${u}`); process.exit(2); }
const key = urls[0].split('/app/')[1].split('?')[0];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?protocol=7&client=bench&version=1.0`);
    const t = setTimeout(() => { ws.terminate(); reject(new Error('connect timeout')); }, 10000);
    // Frames queue up until read: ws emits several messages of one TCP read in one go.
    const queue = [];
    let waiter = null;
    ws.on('message', (buf) => {
      const f = JSON.parse(buf.toString());
      if (f.event === 'pusher:connection_established') {
        clearTimeout(t);
        ws.socketId = JSON.parse(f.data).socket_id;
        resolve(ws);
        return;
      }
      if (f.event === 'pusher:ping') { ws.send('{"event":"pusher:pong","data":{}}'); return; }
      if (waiter) { const w = waiter; waiter = null; w(f); } else queue.push(f);
    });
    ws.next = () => new Promise((res, rej) => {
      if (queue.length) { res(queue.shift()); return; }
      const tt = setTimeout(() => { waiter = null; rej(new Error('no answer within 10 s')); }, 10000);
      waiter = (f) => { clearTimeout(tt); res(f); };
    });
    ws.on('error', (e) => { clearTimeout(t); reject(e); });
  });
}

async function join(ws, channel, user) {
  const data = JSON.stringify({ user_id: user, user_info: { n: user } });
  const sig = crypto.createHmac('sha256', secret).update(`${ws.socketId}:${channel}:${data}`).digest('hex');
  ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel, auth: `${key}:${sig}`, channel_data: data } }));
  for (;;) {
    const f = await ws.next();
    if (f.event === 'pusher_internal:subscription_succeeded' && f.channel === channel) return;
    if (f.event === 'pusher:subscription_error' || f.event === 'pusher:error') throw new Error(JSON.stringify(f));
  }
}

const cpu0 = process.cpuUsage();
const cpu = () => { const u = process.cpuUsage(cpu0); return (u.user + u.system) / 1e6; };

if (mode === 'rate') {
  const workers = Number(args.workers || 30);
  const duration = Number(args.duration || 10) * 1000;
  const socks = await Promise.all(Array.from({ length: workers }, (_, w) => open(urls[w % urls.length])));
  const lat = [];
  let cycles = 0;
  const t0 = Date.now();
  await Promise.all(socks.map(async (ws, w) => {
    const chan = `presence-bench-${w % 10}`;
    while (Date.now() - t0 < duration) {
      const s = process.hrtime.bigint();
      await join(ws, chan, `w${w}`);
      lat.push(Number(process.hrtime.bigint() - s) / 1e6);
      ws.send(JSON.stringify({ event: 'pusher:unsubscribe', data: { channel: chan } }));
      cycles++;
    }
  }));
  const secs = (Date.now() - t0) / 1000;
  for (const ws of socks) ws.close();
  lat.sort((a, b) => a - b);
  const q = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))];
  console.log(JSON.stringify({ mode, workers, urls: urls.length, cycles, secs, per_s: cycles / secs, p50_ms: q(0.5), p99_ms: q(0.99), client_cpu_s: cpu() }));
} else {
  const members = Number(args.members || 1000);
  const hold = Number(args.hold || 5) * 1000;
  const socks = [];
  for (let i = 0; i < members; i += 50) {
    const batch = await Promise.all(Array.from({ length: Math.min(50, members - i) }, (_, k) => open(urls[(i + k) % urls.length])));
    await Promise.all(batch.map((ws, k) => join(ws, 'presence-mem', `m${i + k}`)));
    socks.push(...batch);
  }
  console.error(`joined ${socks.length}`);
  await sleep(hold);
  for (const ws of socks) ws.close();
  console.log(JSON.stringify({ mode, members: socks.length, client_cpu_s: cpu() }));
}
process.exit(0);
