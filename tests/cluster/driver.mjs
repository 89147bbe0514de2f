// The cluster test driver (run by tests/cluster/run.sh, which builds the namespaces): starts the
// engine and three pushbox nodes, the webhook receiver and the auth endpoint, then runs the seven
// cases in an order where each leaves the cluster whole for the next (the Redis restart without
// persistence last), and prints a summary per case. Exit status 1 if any case failed.
//
// Environment: ENGINE (redis|valkey), ENGINE_BIN, PUSHBOX_BIN, PBT_RUN_DIR, PBT_PIDFILE, PBT_NET,
// CASES (comma list: presence,webhooks,exclusion,terminate,crash,partition,full,lag,redis), SEED,
// PRESENCE_STEPS, LEASE_SECS, HEARTBEAT_SECS, MAX_LAG_SECS, LAG_RATE, SINGLE (one node without
// [cluster]), NODE_LOG.
import { Checks, within } from './lib/check.mjs';
import { Engine, makeNodes, DRIVER_IP, SINGLE, LEASE_SECS, HEARTBEAT_SECS } from './lib/procs.mjs';
import { Receiver, alternation, ordered } from './lib/webhooks.mjs';
import { World, Fleet, APP, sdkFor, sleep } from './lib/world.mjs';
import { startAuthServer } from '../clients/lib/helpers.mjs';
import { presence } from './cases/presence.mjs';
import { webhooks, checkAlternation } from './cases/webhooks.mjs';
import { exclusion } from './cases/exclusion.mjs';
import { terminate } from './cases/terminate.mjs';
import { crash } from './cases/crash.mjs';
import { partition } from './cases/partition.mjs';
import { redisRestart } from './cases/redis_restart.mjs';
import { full } from './cases/full.mjs';
import { lag } from './cases/lag.mjs';

const ALL = [
  ['presence', '(1) presence per observer vs ground truth', presence, false],
  ['webhooks', '(2) webhooks alternate, 3 s delay, quick reconnect silent', webhooks, false],
  ['exclusion', '(6) socket_id exclusion across nodes', exclusion, false],
  ['terminate', '(7) terminate_connections and sendToUser across nodes', terminate, false],
  ['crash', '(3) kill -9 a node', crash, true],
  ['partition', '(4) node cut from Redis, shorter and longer than the lease', partition, true],
  ['full', '(extra) Redis full: refuses writes while publishing and joining', full, true],
  ['lag', '(extra) a node that lags the bus: /up 503 and the lag metric, then 200', lag, true],
  ['redis', '(5) Redis restart with and without persistence under publishing', redisRestart, true],
];

const wanted = process.env.CASES ? new Set(process.env.CASES.split(',')) : null;
const engineKind = process.env.ENGINE || 'redis';
const seed = Number(process.env.SEED || 20261205);
const results = [];
const started = Date.now();

function line(s = '') { process.stdout.write(`${s}\n`); }

async function main() {
  const engine = new Engine(engineKind);
  const receiver = await Receiver.start(DRIVER_IP);
  const nodes = makeNodes({ engine, webhookUrl: receiver.url });
  const world = new World();
  const auth = await startAuthServer({ apps: { main: APP }, host: nodes.a.ip, port: nodes.a.port }, 'main');
  const ctx = { engine, receiver, nodes, world, auth, seed, hooksFrom: 0, hooksResetAt: null };
  line(`engine ${engineKind} (${engine.bin}); ${SINGLE ? 'SINGLE node, no [cluster]' : `3 nodes, lease ${LEASE_SECS} s, heartbeat ${HEARTBEAT_SECS} s`}; seed ${seed}`);

  try {
    await engine.start({ aof: true });
    for (const n of nodes.list) await n.start();

    // Smoke: an event published on A reaches a client on C. Without it nothing else can pass.
    const smoke = new Checks('smoke');
    const fleet0 = new Fleet(world, auth);
    const s = await fleet0.open(nodes.c, { user: 'smoke' });
    await s.subscribe('smoke');
    s.record('smoke', 'e');
    await sdkFor(nodes.a).trigger('smoke', 'e', { n: 1 });
    smoke.ok(await within(5000, () => s.got('smoke', 'e').length === 1), 'an event published on A reaches a client on C');
    await fleet0.closeAll();
    await settle(receiver, world, true);
    results.push({ id: 'smoke', title: 'cluster is up: A → C', c: smoke, ms: 0 });
    if (!smoke.green) throw new Error('smoke failed: the nodes do not share events; later cases would only repeat it');

    for (const [id, title, fn, needsCluster] of ALL) {
      if (wanted && !wanted.has(id)) continue;
      const c = new Checks(id);
      if (needsCluster && SINGLE && !process.env.FORCE) { results.push({ id, title, c, ms: 0, skipped: 'needs three nodes' }); continue; }
      const fleet = new Fleet(world, auth);
      const t0 = Date.now();
      line(`\n-- ${title}`);
      try {
        await fn({ ...ctx, fleet, get hooksResetAt() { return ctx.hooksResetAt; }, set hooksResetAt(v) { ctx.hooksResetAt = v; } }, c);
      } catch (e) {
        c.fail(`threw: ${e.stack || e}`);
      }
      await fleet.closeAll();
      await settle(receiver, world, ctx.hooksResetAt === null);
      results.push({ id, title, c, ms: Date.now() - t0 });
      printCase(results[results.length - 1]);
      if (!c.green) dumpLogs(nodes, engine);
    }

    // Webhooks over the whole run: alternation and end state (after Redis lost its data, the
    // first webhook of each channel may be either, the rest must alternate).
    if (!wanted || wanted.has('webhooks')) {
      await sleep(4500);
      const c = new Checks('webhooks-run');
      c.ok(receiver.invalid.length === 0, 'every webhook request of the run verifies', receiver.invalid.slice(0, 3).join('; '));
      const reset = ctx.hooksResetAt;
      if (reset === null) checkAlternation(c, receiver, world, 0, 'whole run');
      else {
        checkAlternation(c, receiver, null, 0, 'before Redis lost its data', true, reset);
        checkAlternation(c, receiver, world, reset, 'after Redis lost its data', false);
      }
      results.push({ id: 'webhooks-run', title: '(2) webhooks over the whole run', c, ms: 0 });
      printCase(results[results.length - 1]);
    }
  } finally {
    for (const n of nodes.list) await n.stop().catch(() => {});
    await engine.kill9().catch(() => {});
    await receiver.close();
    await auth.close();
  }
}

/**
 * Wait (bounded) until the last lifecycle webhook of every channel and member equals the truth,
 * so the delayed vacated/removed of one case (3 s) never land in the next case's window.
 */
async function settle(receiver, world, knownStart) {
  const done = () => {
    const { last } = alternation(ordered(receiver.events), knownStart, () => true);
    for (const [key, up] of last) {
      const [kind, chan, user] = key.split('|');
      if ((kind === 'c' ? world.occupied(chan) : world.count(chan, user) > 0) !== up) return false;
    }
    return true;
  };
  await within(10000, done, 100);
  await sleep(300);
}

function printCase(r) {
  const status = r.skipped ? 'SKIP' : r.c.green ? 'PASS' : 'FAIL';
  line(`${status} ${r.title}: ${r.c.passed} checks passed, ${r.c.failures.length} failed${r.ms ? ` (${(r.ms / 1000).toFixed(1)} s)` : ''}${r.skipped ? ` (${r.skipped})` : ''}`);
  for (const f of r.c.failures.slice(0, 15)) line(`    FAILED ${f}`);
  if (r.c.failures.length > 15) line(`    … ${r.c.failures.length - 15} more`);
  for (const n of r.c.notes) line(`    note: ${n}`);
}

function dumpLogs(nodes, engine) {
  for (const n of nodes.list) {
    const lines = n.logTail(20000).split('\n').filter((l) => /WARN|ERROR|warn|error/.test(l)).slice(-8);
    if (lines.length) line(`    node ${n.name} log (warnings): \n      ${lines.join('\n      ')}`);
  }
  void engine;
}

let failed = false;
try {
  await main();
} catch (e) {
  line(`\nFATAL ${e.stack || e}`);
  failed = true;
}
const ran = results.filter((r) => !r.skipped);
const bad = ran.filter((r) => !r.c.green);
line(`\n== cluster tests on ${engineKind}: summary (${((Date.now() - started) / 1000).toFixed(0)} s)`);
for (const r of results) line(`  ${r.skipped ? 'SKIP' : r.c.green ? 'PASS' : 'FAIL'}  ${r.title}${r.c.failures.length ? ` — ${r.c.failures[0].slice(0, 160)}` : ''}`);
line(`${engineKind}: ${ran.length - bad.length} passed, ${bad.length} failed, ${results.length - ran.length} skipped`);
process.exit(failed || bad.length ? 1 : 0);
