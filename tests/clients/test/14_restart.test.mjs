// Graceful stop and restart (issue 5): SIGTERM → every client gets `pusher:error` 4200 and a close
// 4200; pushbox exits within a bound; pusher-js (close code 4200-4299 = "retry") reconnects on its
// own once a new pushbox is up on the same port and state dir, gets a new socket id, re-subscribes
// its channels (private: through the auth endpoint again) and receives events published after.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { APPS, freePort, renderConfig } from '../lib/server.mjs';
import { spawnPushbox } from '../lib/tls.mjs';
import {
  Clients, startAuthServer, makeSdk, subscribe, waitEvent, waitUntil, sleep, SOCKET_ID_RE,
} from '../lib/helpers.mjs';

let dir, stateDir, configPath, logPath, port, server, auth, clients, sdk;
let proc1, proc2;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pushbox-restart-'));
  stateDir = path.join(dir, 'state');
  fs.mkdirSync(stateDir);
  port = await freePort();
  configPath = path.join(dir, 'pushbox.toml');
  logPath = path.join(dir, 'pushbox.log');
  fs.writeFileSync(configPath, renderConfig({ stateDir, port, apps: APPS }));
  server = { host: '127.0.0.1', port, apps: APPS, base: `http://127.0.0.1:${port}` };
  proc1 = await spawnPushbox({ configPath, stateDir, logPath, upUrl: `${server.base}/up` });
  auth = await startAuthServer(server);
  clients = new Clients(server, auth);
  sdk = makeSdk(server);
});

after(async () => {
  await clients?.closeAll();
  await auth?.close();
  for (const p of [proc1, proc2]) if (p) await p.stop(3000);
  if (!process.env.KEEP_PUSHBOX_TMP) fs.rmSync(dir, { recursive: true, force: true });
});

const log = () => { try { return fs.readFileSync(logPath, 'utf8').slice(-3000); } catch { return ''; } };

describe('graceful stop and restart on the same port and state dir', () => {
  it('clients get 4200, pushbox exits in bounds, pusher-js reconnects, re-subscribes and receives', async () => {
    const p = await clients.pusher();
    const firstId = p.connection.socket_id;
    assert.match(firstId, SOCKET_ID_RE);
    const priv = await subscribe(p, 'private-restart');
    const pub = await subscribe(p, 'restart-public');

    const raw = await clients.raw();
    await raw.established();

    const errors = [];
    const states = [];
    p.connection.bind('error', (e) => errors.push(e));
    p.connection.bind('state_change', ({ current }) => states.push({ state: current, at: Date.now() }));
    // pusher-js emits subscription_succeeded again when it re-subscribes after the reconnect.
    const resubPriv = waitEvent(priv, 'pusher:subscription_succeeded', { timeout: 30000 });
    const resubPub = waitEvent(pub, 'pusher:subscription_succeeded', { timeout: 30000 });

    // 1. SIGTERM: bounded exit, status 0.
    const stopped = await proc1.stop(10000);
    assert.equal(stopped.killed, false, `pushbox needed SIGKILL; log:\n${log()}`);
    assert.equal(stopped.code, 0, `exit ${JSON.stringify(stopped)}; log:\n${log()}`);
    assert.ok(stopped.ms < 7000, `exit took ${stopped.ms} ms`);
    assert.match(log(), /shutting down/);

    // 2. The wire: a pusher:error 4200 frame, then a close with code 4200.
    const f = await raw.event('pusher:error', { timeout: 2000 });
    const d = typeof f.data === 'string' ? JSON.parse(f.data) : f.data;
    assert.equal(d.code, 4200, f.__text);
    await raw.waitClose(2000);
    assert.equal(raw.closed.code, 4200);

    // 3. pusher-js: saw 4200 and went back to connecting (not a terminal state).
    await waitUntil(() => errors.some((e) => e?.data?.code === 4200), { timeout: 2000, what: 'pusher-js error 4200' });
    await waitUntil(() => states.some((s) => s.state === 'connecting'), { timeout: 2000, what: 'state connecting' });
    assert.ok(!states.some((s) => ['failed', 'disconnected'].includes(s.state)), JSON.stringify(states));

    // Let it retry against the closed port for a moment.
    await sleep(1000);
    assert.notEqual(p.connection.state, 'connected');

    // 4. A new pushbox on the same port and state dir.
    const restartAt = Date.now();
    proc2 = await spawnPushbox({ configPath, stateDir, logPath, upUrl: `${server.base}/up` });
    await waitUntil(() => p.connection.state === 'connected', { timeout: 30000, interval: 50, what: 'pusher-js connected again' });
    const reconnectMs = Date.now() - restartAt;
    const secondId = p.connection.socket_id;
    assert.match(secondId, SOCKET_ID_RE);
    assert.notEqual(secondId, firstId);
    await Promise.all([resubPriv, resubPub]);
    const resubMs = Date.now() - restartAt;

    // 5. Events published after the restart arrive on both channels.
    const gotPriv = waitEvent(priv, 'after.restart');
    const gotPub = waitEvent(pub, 'after.restart');
    const r = await sdk.trigger(['private-restart', 'restart-public'], 'after.restart', { n: 2 });
    assert.equal(r.status, 200);
    assert.deepEqual((await gotPriv).data, { n: 2 });
    assert.deepEqual((await gotPub).data, { n: 2 });
    // The auth endpoint was asked again for the private channel with the new socket id.
    assert.ok(auth.requests.some((q) => q.params.channel_name === 'private-restart' && q.params.socket_id === secondId));
    const info = await sdk.get({ path: '/channels/private-restart', params: {} });
    assert.equal(info.status, 200);
    assert.equal((await info.json()).occupied, true);

    const t0 = states[0]?.at ?? restartAt;
    console.log(`# restart timings: exit ${stopped.ms} ms; reconnect ${reconnectMs} ms and re-subscribe ${resubMs} ms after the new server answered /up; pusher-js states: ${states.map((s) => `${s.state}@+${s.at - t0}ms`).join(" ")} (server back at +${restartAt - t0}ms)`);
  });
});
