// Ground truth and the clients. `World` records which socket is subscribed to which channel as
// which user: it is what every node's answers and every observer's view are compared with.
// `Sock` is one pusher-js connection on one node; each presence subscription replays the member
// events it receives into a member set and records what it saw, so a check can compare any
// observer with the truth and find duplicate `member_added` or premature `member_removed`.
import {
  Pusher, PusherServer, pusherOptions, subscribe, waitConnected, sleep, waitUntil,
} from '../../clients/lib/helpers.mjs';

export { sleep, waitUntil };

export const APP = { id: '4242', key: 'cluster-key', secret: 'cluster-secret' };

export class World {
  constructor() {
    this.subs = new Map(); // channel -> Map(label -> user or '')
  }

  join(chan, label, user = '') {
    if (!this.subs.has(chan)) this.subs.set(chan, new Map());
    this.subs.get(chan).set(label, user);
  }

  leave(chan, label) {
    const m = this.subs.get(chan);
    if (m) m.delete(label);
  }

  /** Distinct users present on a presence channel, sorted. */
  users(chan) {
    const m = this.subs.get(chan);
    return m ? [...new Set([...m.values()].filter((u) => u !== ''))].sort() : [];
  }

  /** Connections of `user` on `chan`. */
  count(chan, user) {
    const m = this.subs.get(chan);
    if (!m) return 0;
    let n = 0;
    for (const u of m.values()) if (u === user) n++;
    return n;
  }

  subscriptions(chan) { return this.subs.get(chan)?.size ?? 0; }
  occupied(chan) { return this.subscriptions(chan) > 0; }
}

/** The Node SDK pointed at one node. */
export function sdkFor(node) {
  return new PusherServer({
    appId: APP.id, key: APP.key, secret: APP.secret, host: node.ip, port: String(node.port),
    useTLS: false, timeout: 5000,
  });
}

let seq = 0;

export class Sock {
  /** Connect pusher-js to `node` as `user` (presence identity and signin). */
  static async open(world, auth, node, { user = 'anon', label } = {}) {
    const server = { host: node.ip, port: node.port, apps: node.apps };
    const p = new Pusher(APP.key, pusherOptions(server, auth, { user }));
    const s = new Sock(world, p, node, user, label || `${user}#${++seq}@${node.name}`);
    await waitConnected(p, 8000);
    s.socketId = p.connection.socket_id;
    return s;
  }

  constructor(world, pusher, node, user, label) {
    this.world = world;
    this.pusher = pusher;
    this.node = node;
    this.user = user;
    this.label = label;
    this.channels = new Map(); // chan -> pusher-js Channel
    this.members = new Map(); // presence chan -> Set(user ids) replayed from the wire
    this.memberLog = new Map(); // presence chan -> [{type, user, at}]
    this.violations = []; // human-readable, found while replaying
    this.events = new Map(); // `${chan}|${event}` -> [data]
    this.closed = false;
  }

  async subscribe(chan) {
    const ch = this.pusher.subscribe(chan);
    if (chan.startsWith('presence-')) this.trackPresence(chan, ch);
    await subscribe(this.pusher, chan, 8000);
    this.channels.set(chan, ch);
    this.world.join(chan, this.label, chan.startsWith('presence-') ? this.user : '');
    return ch;
  }

  trackPresence(chan, ch) {
    const log = [];
    this.memberLog.set(chan, log);
    ch.bind('pusher:subscription_succeeded', (members) => {
      const set = new Set();
      members.each((m) => set.add(String(m.id)));
      this.members.set(chan, set);
      log.push({ type: 'snapshot', users: [...set].sort(), at: Date.now() });
    });
    ch.bind('pusher:member_added', (m) => {
      const set = this.members.get(chan);
      const u = String(m.id);
      if (!set) { this.violations.push(`${this.label} ${chan}: member_added ${u} before subscription_succeeded`); return; }
      if (set.has(u)) this.violations.push(`${this.label} ${chan}: duplicate member_added for ${u} (already listed)`);
      set.add(u);
      log.push({ type: 'added', user: u, at: Date.now() });
    });
    ch.bind('pusher:member_removed', (m) => {
      const set = this.members.get(chan);
      const u = String(m.id);
      if (!set) return;
      if (!set.has(u)) this.violations.push(`${this.label} ${chan}: member_removed for ${u}, who was not listed`);
      set.delete(u);
      log.push({ type: 'removed', user: u, at: Date.now() });
    });
  }

  /** Record every `event` on `chan` (bind before the events can arrive). */
  record(chan, event) {
    const k = `${chan}|${event}`;
    if (!this.events.has(k)) {
      const arr = [];
      this.events.set(k, arr);
      const ch = this.channels.get(chan) || this.pusher.channel(chan) || this.pusher.subscribe(chan);
      ch.bind(event, (d) => arr.push(d));
    }
    return this.events.get(k);
  }

  got(chan, event) { return this.events.get(`${chan}|${event}`) || []; }

  unsubscribe(chan) {
    this.pusher.unsubscribe(chan);
    this.channels.delete(chan);
    this.world.leave(chan, this.label);
  }

  /** Close the connection; the truth forgets every subscription of this socket. */
  disconnect() {
    if (this.closed) return;
    this.closed = true;
    for (const chan of this.channels.keys()) this.world.leave(chan, this.label);
    this.channels.clear();
    try { this.pusher.disconnect(); } catch { /* already gone */ }
  }

  /** The node died under this socket: the truth forgets it; pusher-js stops retrying. */
  abandon() { this.disconnect(); }

  get state() { return this.pusher.connection.state; }
}

/** Every socket a case opened, closed at the end of the case. */
export class Fleet {
  constructor(world, auth) {
    this.world = world;
    this.auth = auth;
    this.all = [];
  }

  async open(node, opts) {
    const s = await Sock.open(this.world, this.auth, node, opts);
    this.all.push(s);
    return s;
  }

  async closeAll() {
    for (const s of this.all.splice(0)) s.disconnect();
    await sleep(100);
  }
}

/** Signed GET on a node's HTTP API (through the Node SDK); {status, json}. */
export async function apiGet(node, pathName, params = {}) {
  try {
    const res = await sdkFor(node).get({ path: pathName, params });
    return { status: res.status, json: await res.json() };
  } catch (e) {
    return { status: e.status || 0, json: undefined, error: String(e.message || e) };
  }
}
