// Client events (whisper): relaying rules, user_id metadata, rejection paths and the rate limit.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../lib/server.mjs';
import {
  Clients, startAuthServer, makeSdk, subscribe, waitEvent, collect, sleep, waitUntil, errorCode,
} from '../lib/helpers.mjs';

let server, auth, clients, sdk;

before(async () => {
  // "counted" gets client events switched off for the negative test below.
  server = await startServer({ apps: { counted: { client_events: false } } });
  auth = await startAuthServer(server);
  clients = new Clients(server, auth);
  sdk = makeSdk(server);
});
after(async () => { await clients?.closeAll(); await auth?.close(); await server?.stop(); });
afterEach(async () => { await clients.closeAll(); });

async function rawJoin(r, channel, sdkFor = sdk, presence) {
  const a = sdkFor.authorizeChannel(r.socketId, channel, presence);
  const from = r.frames.length;
  r.send({ event: 'pusher:subscribe', data: { channel, auth: a.auth, ...(a.channel_data ? { channel_data: a.channel_data } : {}) } });
  return r.next((f) => f.channel === channel && f.event === 'pusher_internal:subscription_succeeded', { from });
}

describe('whisper through Laravel Echo', () => {
  it('private channel: listenForWhisper receives, sender does not get its own whisper', async () => {
    const alice = await clients.echo({ user: '1', name: 'Alice' });
    const bob = await clients.echo({ user: '2', name: 'Bob' });
    const aliceGot = [];
    const bobGot = [];
    alice.private('doc.1').listenForWhisper('typing', (d) => aliceGot.push(d));
    bob.private('doc.1').listenForWhisper('typing', (d) => bobGot.push(d));
    await subscribe(alice.connector.pusher, 'private-doc.1');
    await subscribe(bob.connector.pusher, 'private-doc.1');
    alice.private('doc.1').whisper('typing', { name: 'Alice' });
    await waitUntil(() => bobGot.length === 1, { what: 'Bob receives the whisper' });
    assert.deepEqual(bobGot[0], { name: 'Alice' });
    await sleep(300);
    assert.equal(aliceGot.length, 0, 'client events are never echoed to the sender');
  });

  it('presence channel: whisper arrives with metadata.user_id of the sender', async () => {
    const alice = await clients.echo({ user: '11', name: 'Alice' });
    const bob = await clients.echo({ user: '12', name: 'Bob' });
    alice.join('meet.1');
    bob.join('meet.1');
    await subscribe(alice.connector.pusher, 'presence-meet.1');
    const bch = await subscribe(bob.connector.pusher, 'presence-meet.1');
    const got = waitEvent(bch, 'client-wave');
    alice.join('meet.1').whisper('wave', { hi: true });
    const { data, metadata } = await got;
    assert.deepEqual(data, { hi: true });
    assert.equal(metadata.user_id, '11');
  });
});

describe('client events on the wire', () => {
  it('relayed data is a string; user_id only on presence channels', async () => {
    const a = await clients.raw();
    const b = await clients.raw();
    await a.established();
    await b.established();
    for (const r of [a, b]) await rawJoin(r, 'private-wire');
    await rawJoin(a, 'presence-wire', sdk, { user_id: 'u-a' });
    await rawJoin(b, 'presence-wire', sdk, { user_id: 'u-b' });

    a.send({ event: 'client-obj', channel: 'private-wire', data: { x: 1 } });
    const f1 = await b.event('client-obj');
    assert.equal(f1.channel, 'private-wire');
    assert.equal(typeof f1.data, 'string');
    assert.deepEqual(JSON.parse(f1.data), { x: 1 });
    assert.equal(f1.user_id, undefined, 'no user_id on private channels');

    a.send({ event: 'client-str', channel: 'private-wire', data: '{"y":2}' });
    const f2 = await b.event('client-str');
    assert.equal(f2.data, '{"y":2}', 'string data (Java/Swift SDKs) is relayed as is');

    a.send({ event: 'client-nodata', channel: 'private-wire' });
    await b.event('client-nodata');

    a.send({ event: 'client-p', channel: 'presence-wire', data: { z: 3 } });
    const f3 = await b.event('client-p');
    assert.equal(f3.user_id, 'u-a');
    await sleep(200);
    assert.equal(a.frames.filter((f) => f.event && f.event.startsWith('client-')).length, 0, 'no echo to sender');
    assert.equal(a.closed, null);
  });

  it('client event on a public channel is not relayed; sender stays connected', async () => {
    const p1 = await clients.pusher();
    const p2 = await clients.pusher();
    const ch1 = await subscribe(p1, 'lobby');
    const ch2 = await subscribe(p2, 'lobby');
    const seen = collect(ch2, 'client-shout');
    ch1.trigger('client-shout', { loud: true });
    await sleep(500);
    assert.equal(seen.length, 0);
    assert.equal(p1.connection.state, 'connected');
  });

  it('client event from a connection not subscribed to the channel is not relayed', async () => {
    const a = await clients.raw();
    const b = await clients.raw();
    await a.established();
    await b.established();
    await rawJoin(b, 'private-members-only');
    const from = b.frames.length;
    a.send({ event: 'client-sneak', channel: 'private-members-only', data: {} });
    await sleep(500);
    assert.equal(b.frames.slice(from).filter((f) => f.event === 'client-sneak').length, 0);
  });

  it('events without the client- prefix from a client are not relayed', async () => {
    const a = await clients.raw();
    const b = await clients.raw();
    await a.established();
    await b.established();
    for (const r of [a, b]) await rawJoin(r, 'private-prefix');
    const from = b.frames.length;
    a.send({ event: 'fake-server-event', channel: 'private-prefix', data: {} });
    a.send({ event: 'pusher_internal:member_added', channel: 'private-prefix', data: '{"user_id":"x"}' });
    await sleep(500);
    assert.equal(b.frames.slice(from).length, 0, `unexpected: ${b.frames.slice(from).map((f) => f.__text)}`);
  });

  it('app with client_events = false does not relay', async () => {
    const csdk = makeSdk(server, 'counted');
    const key = server.apps.counted.key;
    const a = await clients.raw(key);
    const b = await clients.raw(key);
    await a.established();
    await b.established();
    for (const r of [a, b]) await rawJoin(r, 'private-quiet', csdk);
    const from = b.frames.length;
    a.send({ event: 'client-x', channel: 'private-quiet', data: {} });
    await sleep(500);
    assert.equal(b.frames.slice(from).filter((f) => f.event === 'client-x').length, 0);
  });
});

describe('client event rate limit', () => {
  it('more than 10/s yields pusher:error 4301 without disconnecting; later events pass again', async () => {
    const sender = await clients.pusher({ user: '1' });
    const receiver = await clients.pusher({ user: '2' });
    const sch = await subscribe(sender, 'private-burst');
    const rch = await subscribe(receiver, 'private-burst');
    const got = collect(rch, 'client-tick');
    const errors = collect(sender.connection, 'error');
    const states = [];
    sender.connection.bind('state_change', (s) => states.push(s.current));
    for (let i = 0; i < 15; i++) sch.trigger('client-tick', { i });
    await waitUntil(() => errors.some((e) => errorCode(e.data) === 4301), {
      timeout: 3000, what: `pusher:error 4301 (errors: ${JSON.stringify(errors.map((e) => e.data))})`,
    });
    await sleep(600);
    assert.equal(sender.connection.state, 'connected');
    assert.deepEqual(states, [], 'the connection must not drop or reconnect');
    assert.ok(got.length >= 10 && got.length < 15, `receiver got ${got.length} of 15`);
    await sleep(1100);
    const before = got.length;
    sch.trigger('client-tick', { i: 'after' });
    await waitUntil(() => got.length === before + 1, { what: 'an event after the window passes' });
  });

  it('raw: the 4301 error is a pusher:error frame, not a close', async () => {
    const a = await clients.raw();
    await a.established();
    await rawJoin(a, 'private-burst2');
    for (let i = 0; i < 20; i++) a.send({ event: 'client-t', channel: 'private-burst2', data: { i } });
    const e = await a.event('pusher:error');
    const data = typeof e.data === 'string' ? JSON.parse(e.data) : e.data;
    assert.equal(data.code, 4301);
    await sleep(300);
    assert.equal(a.closed, null);
  });
});
