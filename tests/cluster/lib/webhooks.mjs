// The webhook receiver every node posts to: it checks X-Pusher-Key and X-Pusher-Signature
// (HMAC-SHA256 of the raw body with the app secret, as pusher-http-php does) and keeps every event
// with its arrival time, so a check can ask what arrived after a mark, and whether the sequence per
// channel and per (channel, user) alternates.
import http from 'node:http';
import crypto from 'node:crypto';
import { APP } from './world.mjs';

const LIFECYCLE = new Set(['channel_occupied', 'channel_vacated', 'member_added', 'member_removed']);

export class Receiver {
  static async start(host) {
    const r = new Receiver();
    await new Promise((resolve) => r.srv.listen(0, host, resolve));
    r.url = `http://${host}:${r.srv.address().port}/pusher/webhook`;
    return r;
  }

  constructor() {
    this.events = []; // {name, channel, user_id, at, time_ms, raw}
    this.requests = 0;
    this.invalid = []; // why each refused request was refused
    this.dupOk = []; // [from, to) index ranges where identical repeats are allowed (node crash)
    this.srv = http.createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        const raw = Buffer.concat(chunks).toString('utf8');
        this.requests++;
        const why = this.verify(req.headers, raw);
        if (why) {
          this.invalid.push(why);
          res.writeHead(401);
          res.end();
          return;
        }
        const at = Date.now();
        let body;
        try { body = JSON.parse(raw); } catch { this.invalid.push('body is not JSON'); res.writeHead(400); res.end(); return; }
        for (const e of body.events || []) this.events.push({ ...e, at, time_ms: body.time_ms, idx: this.events.length });
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end('{}');
      });
    });
  }

  verify(headers, raw) {
    if (headers['x-pusher-key'] !== APP.key) return `X-Pusher-Key ${headers['x-pusher-key']}`;
    const want = crypto.createHmac('sha256', APP.secret).update(raw).digest('hex');
    const got = String(headers['x-pusher-signature'] || '');
    if (got.length !== want.length || !crypto.timingSafeEqual(Buffer.from(got), Buffer.from(want))) {
      return `bad X-Pusher-Signature on ${raw.slice(0, 200)}`;
    }
    return null;
  }

  mark() { return this.events.length; }

  /** Lifecycle events (occupied/vacated, added/removed) received after `mark`, filtered. */
  since(mark, pred = () => true) { return this.events.slice(mark).filter((e) => LIFECYCLE.has(e.name) && pred(e)); }

  close() {
    return new Promise((r) => { this.srv.closeAllConnections?.(); this.srv.close(() => r()); });
  }
}

/**
 * Strict alternation per channel (occupied, vacated, occupied, …) and per (channel, user)
 * (added, removed, …) over `events`, which must start from a moment when nothing was occupied.
 * With `knownStart` false (after Redis lost its data) the first event of each key may be either.
 * `dupOk(i)` says whether an identical repeat at index i is allowed (a node was killed between
 * enqueue and ack); allowed repeats are counted, not reported.
 * Returns {violations: [..], duplicates: n, last: Map(key -> up?)}.
 */
export function alternation(events, knownStart = true, dupOk = () => false) {
  const last = new Map();
  const violations = [];
  let duplicates = 0;
  events.forEach((e, i) => {
    let key, up;
    if (e.name === 'channel_occupied' || e.name === 'channel_vacated') {
      key = `c|${e.channel}`;
      up = e.name === 'channel_occupied';
    } else if (e.name === 'member_added' || e.name === 'member_removed') {
      key = `u|${e.channel}|${e.user_id}`;
      up = e.name === 'member_added';
    } else return;
    const prev = last.get(key);
    const what = `${e.name} ${e.channel}${e.user_id ? ` user ${e.user_id}` : ''}`;
    if (prev !== undefined && prev === up) {
      if (dupOk(e.idx ?? i)) duplicates++;
      else violations.push(`${what} twice in a row`);
    } else if (knownStart && prev === undefined && !up) {
      violations.push(`${what} with no ${key[0] === 'c' ? 'channel_occupied' : 'member_added'} before it`);
    }
    last.set(key, up);
  });
  return { violations, duplicates, last };
}

/**
 * Events in the order they happened: by the request's `time_ms`, then by arrival. Two nodes send
 * their own batches, so two batches close in time may arrive either way round; Pusher tells
 * receivers to order by `time_ms`, and so does this check.
 */
export function ordered(events) {
  return [...events].sort((a, b) => (a.time_ms - b.time_ms) || (a.idx - b.idx));
}
