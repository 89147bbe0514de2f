// (extra) A node that lags the bus says so (issue 21: "/up and the metrics say when a node lags
// the bus"). What Redis sends to C is throttled to RATE (HTB + TBF on C's veth, see
// Node.throttle: no netem on this kernel) while A and B publish small events faster than C can
// read them, so C's reader gets only full batches (`XREAD COUNT 512`) and stops being caught up.
// Within the bounded publishing: C's /up answers 503 with the lag reason ("… behind the cluster's
// bus") — not "Redis has not answered", C keeps talking to Redis — and while it does,
// pushbox_cluster_bus_lag_seconds on C is > 0 (and A's /up stays 200). After the throttle is
// removed: C's /up is 200 again and its lag is 0.
//
// Not asserted: pushbox_cluster_bus_lag_entries counts entries read but not yet delivered, and
// C's deliverer keeps up with what its reader gets (the wire is the bottleneck), so it stays ~0.
import { within } from '../lib/check.mjs';
import { MAX_LAG_SECS } from '../lib/procs.mjs';
import { sdkFor, sleep } from '../lib/world.mjs';

const CHAN = 'lag-ev';
const RATE = process.env.LAG_RATE || '1mbit';
/** ~200 bytes of data per event: a full batch of 512 is ~200 KB, ~1.6 s at 1 mbit (< the 7 s read deadline). */
const DATA = 'x'.repeat(200);
const WORKERS = 4;
/** Bounds on the publishing: at most this long and this many events. */
const PUBLISH_MS = 25000;
const MAX_EVENTS = 40000;

/** `WORKERS` loops of 10-event batches over A and B until `stop.now`; resolves {ok, failed}. */
async function publishUntil(nodes, stop) {
  const sdks = [sdkFor(nodes.a), sdkFor(nodes.b)];
  const out = { ok: 0, failed: 0, errors: [] };
  const t0 = Date.now();
  const worker = async (w) => {
    for (let i = 0; !stop.now && Date.now() - t0 < PUBLISH_MS && out.ok + out.failed < MAX_EVENTS; i++) {
      const batch = Array.from({ length: 10 }, (_, k) => ({ channel: CHAN, name: 'e', data: { w, i, k, d: DATA } }));
      try {
        const r = await sdks[(w + i) % 2].triggerBatch(batch);
        if (r.status === 200) out.ok += 10; else { out.failed += 10; out.errors.push(r.status); }
      } catch (e) {
        out.failed += 10;
        if (out.errors.length < 5) out.errors.push(e.status || e.message);
      }
      await sleep(10);
    }
  };
  await Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w)));
  return out;
}

export async function lag(ctx, c) {
  const { nodes } = ctx;
  const before = await nodes.c.up();
  c.ok(before.status === 200, 'C\'s /up is 200 before the throttle', `${before.status} ${before.body}`);

  await nodes.c.throttle(RATE);
  const stop = { now: false };
  const t0 = Date.now();
  let pub;
  let published = { ok: 0, failed: 0, errors: [] };
  let saw = null;
  let sawAt = 0;
  let lagSeconds;
  let redisUp;
  let upA;
  let other = null;
  try {
    pub = publishUntil(nodes, stop);
    // C lags once its reader sees only full batches for more than max_lag.
    saw = await within(PUBLISH_MS, async () => {
      const up = await nodes.c.up();
      if (up.status === 503 && /behind the cluster's bus/.test(up.body)) { sawAt = Date.now(); return up; }
      if (up.status === 503 && !other) other = up.body;
      return null;
    }, 250);
    if (saw) {
      lagSeconds = await nodes.c.metric('pushbox_cluster_bus_lag_seconds');
      redisUp = await nodes.c.metric('pushbox_cluster_redis_up');
      upA = await nodes.a.up();
    }
  } finally {
    stop.now = true;
    if (pub) published = await pub;
    await nodes.c.unthrottle();
  }
  const removedAt = Date.now();
  c.ok(published.failed === 0, 'A and B accept every event while C lags', `${published.failed} failed: ${published.errors.slice(0, 5)}`);
  c.note(`published ${published.ok} events in ${((removedAt - t0) / 1000).toFixed(1)} s with C's Redis link at ${RATE}`);
  c.ok(!!saw, `C's /up answers 503 with the lag reason (max_lag ${MAX_LAG_SECS} s) while it falls behind`,
    saw ? '' : `never within ${PUBLISH_MS} ms${other ? `; another 503: ${other}` : ''}`);
  if (saw) {
    c.note(`C /up after ${((sawAt - t0) / 1000).toFixed(1)} s of throttle: ${saw.body}; lag_seconds ${lagSeconds}`);
    c.ok(lagSeconds > 0, 'pushbox_cluster_bus_lag_seconds on C is > 0 while its /up says it lags', `got ${lagSeconds}`);
    c.ok(redisUp === 1, 'C still reaches Redis while it lags (pushbox_cluster_redis_up 1)', `got ${redisUp}`);
    c.ok(upA.status === 200, 'A (not throttled) answers 200 meanwhile', `${upA.status} ${upA.body}`);
  }
  const back = await within(30000, async () => (await nodes.c.up()).status === 200, 250);
  c.ok(back, 'C\'s /up is 200 again after the throttle is removed', `still ${(await nodes.c.up()).body}`);
  if (back) c.note(`C /up 200 again ${Date.now() - removedAt} ms after the throttle was removed`);
  const zero = await within(10000, async () => (await nodes.c.metric('pushbox_cluster_bus_lag_seconds')) === 0, 250);
  c.ok(zero, 'pushbox_cluster_bus_lag_seconds on C is 0 again', `got ${await nodes.c.metric('pushbox_cluster_bus_lag_seconds')}`);
}
