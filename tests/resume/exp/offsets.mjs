// Experiment (not part of the suite): does a 4 s cut make pusher-js reconnect, by the time between
// the last event it received and the cut? Six clients, one per offset, share each cut.
//   SKIP_BUILD=1 TRIALS=4 tests/resume/run.sh exp/offsets.mjs      (PONG=3: pushbox's pong_timeout)
// Result at 12:50 UTC (pong_timeout 30): offsets 0.1 s and 0.5 s keep their socket and get the
// event published during the cut ~50-100 ms after the link is back; from 1.0 s on, pusher-js
// reconnects and that event is lost (3 s activity + 2 s pongTimeout = 5 s of silence allowed).
import { Agent, startBox, cut, heal, publish, sleep } from '../lib/harness.mjs';
const agent = await Agent.start();
const A = await startBox({ name: 'X', server: { pong_timeout: Number(process.env.PONG || 30) } });
const offs = [0.1, 0.5, 1.0, 1.5, 2.0, 2.5];
for (const o of offs) { await agent.pusher(`c${o}`, A); await agent.subscribe(`c${o}`, `ch${o}`); }
for (let trial = 0; trial < Number(process.env.TRIALS || 3); trial++) {
  const c = Date.now() + 3000;
  await Promise.all(offs.map(async (o) => { await sleep(c - o * 1000 - Date.now()); await publish(A, `ch${o}`, { n: 1 }); }));
  await sleep(c - Date.now());
  const cutAt = cut();
  await sleep(1000);
  for (const o of offs) await publish(A, `ch${o}`, { n: 2 });
  await sleep(cutAt + 4000 - Date.now());
  const healAt = heal();
  await sleep(6000);
  const res = offs.map((o) => {
    const moved = agent.states(`c${o}`).filter((s) => s.t > cutAt).map((s) => s.current);
    const got2 = agent.msgs(`c${o}`, `ch${o}`).filter((e) => e.event === 'seq' && e.data.n === 2 && e.t > cutAt);
    return `${o}s: ${moved.length ? 'RECONNECT ' + moved.join('>') : 'same socket'}${got2.length ? ` n2 +${got2[0].t - healAt}ms after heal` : ' n2 LOST'}`;
  });
  console.log(`trial ${trial}: ${res.join(' | ')}`);
  for (const o of offs) { const ids = agent.socketIds(`c${o}`); if (ids.length > 1) { await agent.waitSoft(() => agent.states(`c${o}`).at(-1).current === 'connected', { timeout: 30000 }); } }
  agent.events.length = 0;
}
await agent.close(); await A.remove(); process.exit(0);
