// The reconnect storm (issue 20, "Performance"): STORM_N pusher-js clients in the namespace, the
// link cut for 10 s while STORM_EVENTS events are published on their channel, then healed: every
// client abandons its socket at about the same moment, so they all come back together and each
// needs the same 100 missed events replayed. Measured: the time until every client is live again
// (re-subscribed and holding all missed events) and pushbox's peak RSS during the storm
// (VmHWM, reset with clear_refs just before the link comes back), for resume on and off.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { startBox, cut, heal, publish, metrics, metricSum, NET, APPS, PUSHBOX_BIN, sleep, log } from '../../tests/resume/lib/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const N = Number(process.env.STORM_N || 1000);
const E = Number(process.env.STORM_EVENTS || 100);
const MODES = (process.env.STORM_MODES || 'on,off').split(',');

function statusKb(pid, field) {
  const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = s.match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'));
  return m ? Number(m[1]) : null;
}

async function run(mode) {
  const resume = mode === 'on';
  const box = await startBox({ name: `storm-${mode}`, env: { PUSHBOX_RESUME_ENABLED: resume ? 'true' : 'false' } });
  const pid = box.child.pid;
  const env = {
    ...process.env, STORM_N: String(N), STORM_EVENTS: String(E), STORM_HOST: box.host,
    STORM_PORT: String(box.port), STORM_KEY: APPS.main.key, STORM_TOKENS: resume ? '1' : '0',
  };
  delete env.NODE_TEST_CONTEXT;
  const child = spawn('ip', ['netns', 'exec', NET.ns, process.execPath, path.join(here, 'clients.mjs')], { env, stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = [];
  const waiters = [];
  readline.createInterface({ input: child.stdout }).on('line', (l) => {
    let o; try { o = JSON.parse(l); } catch { return; }
    lines.push(o);
    for (const w of waiters.splice(0)) w();
  });
  const next = async (ev, timeout) => {
    const deadline = Date.now() + timeout;
    for (;;) {
      const o = lines.find((x) => x.ev === ev || x.ev === 'error');
      if (o) { if (o.ev === 'error') throw new Error(o.error); return o; }
      if (Date.now() > deadline) throw new Error(`storm clients: no ${ev} within ${timeout} ms`);
      await sleep(100);
    }
  };
  try {
    await next('ready', 90000);
    await publish(box, 'storm', { n: 0 }); // one delivered event: every client's activity timer starts together
    await sleep(1500);
    const idleRssKb = statusKb(pid, 'VmRSS');
    const cutAt = cut();
    await sleep(800);
    const pubStart = Date.now();
    const pad = 'x'.repeat(200);
    for (let n = 1; n <= E; n++) {
      const s = await publish(box, 'storm', { n, pad });
      if (s !== 200) throw new Error(`publish ${n} → ${s}`);
    }
    const pubMs = Date.now() - pubStart;
    await sleep(Math.max(0, cutAt + 10000 - Date.now()));
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5'); // reset VmHWM: the peak below is the storm's
    const rssAtHealKb = statusKb(pid, 'VmRSS');
    let peakSampleKb = rssAtHealKb;
    const sampler = setInterval(() => { try { peakSampleKb = Math.max(peakSampleKb, statusKb(pid, 'VmRSS')); } catch { /* exited */ } }, 20);
    const healAt = heal();
    child.stdin.write(`heal ${healAt}\n`);
    const sum = await next('summary', 180000);
    clearInterval(sampler);
    const hwmKb = statusKb(pid, 'VmHWM');
    const m = await metrics(box);
    const res = {
      mode, n: N, events: E, binary: PUSHBOX_BIN, publishMs: pubMs,
      idleRssKb, rssAtHealKb, peakRssKb: Math.max(hwmKb ?? 0, peakSampleKb), rssAfterKb: statusKb(pid, 'VmRSS'),
      ...sum,
      metrics: {
        attempts: metricSum(m, 'pushbox_resume_attempts_total'),
        succeeded: metricSum(m, 'pushbox_resume_succeeded_total'),
        failed: metricSum(m, 'pushbox_resume_failed_total'),
        replayed: metricSum(m, 'pushbox_resume_replayed_events_total'),
      },
    };
    return res;
  } finally {
    child.kill('SIGKILL');
    await box.remove();
  }
}

const results = [];
for (const mode of MODES) {
  log(`storm: resume ${mode}, ${N} clients, ${E} missed events each`);
  const r = await run(mode);
  results.push(r);
  process.stdout.write(JSON.stringify(r) + '\n');
}
for (const r of results) {
  log(`resume ${r.mode}: ${r.resubscribed}/${r.n} re-subscribed (p50 ${r.resubscribedMs.p50} ms, max ${r.resubscribedMs.max} ms after heal), `
    + `${r.caughtUp}/${r.n} caught up (max ${r.caughtUpMs.max} ms after heal; storm ${r.stormMs} ms from the first client back), `
    + `missing ${r.missingTotal}, duplicates ${r.duplicatesTotal}; RSS idle ${(r.idleRssKb / 1024).toFixed(1)} MiB, `
    + `peak during the storm ${(r.peakRssKb / 1024).toFixed(1)} MiB`);
}
