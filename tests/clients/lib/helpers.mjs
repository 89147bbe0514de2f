// Shared helpers for the real-client suite: pusher-js clients, Laravel Echo, the Node SDK,
// an auth endpoint standing in for Laravel's /broadcasting/auth and /broadcasting/user-auth,
// a raw WebSocket client for wire-level assertions, and hand-signed HTTP API requests.
import http from 'node:http';
import crypto from 'node:crypto';
import Pusher from 'pusher-js';
import PusherServer from 'pusher';
import Echo from 'laravel-echo';
import WebSocket from 'ws';

export { Pusher, PusherServer, Echo, WebSocket };

Pusher.logToConsole = !!process.env.PUSHER_JS_LOG;

export const SOCKET_ID_RE = /^\d+\.\d+$/;
// 32 bytes, base64: the app's encryption master key (lives only in the app, never in pushbox).
export const MASTER_KEY_B64 = Buffer.alloc(32, 7).toString('base64');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolve when `predicate()` is truthy; reject after `timeout` ms with `what` in the message. */
export async function waitUntil(predicate, { timeout = 5000, interval = 20, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(interval);
  }
}

/**
 * Wait for one emission of `event` on a pusher-js emitter (Pusher, Channel, connection, user).
 * Resolves with {data, metadata}. `filter(data, metadata)` may reject uninteresting emissions.
 */
export function waitEvent(target, event, { timeout = 5000, filter } = {}) {
  return new Promise((resolve, reject) => {
    const handler = (data, metadata) => {
      if (filter && !filter(data, metadata)) return;
      clearTimeout(timer);
      target.unbind(event, handler);
      resolve({ data, metadata });
    };
    const timer = setTimeout(() => {
      target.unbind(event, handler);
      reject(new Error(`timed out after ${timeout} ms waiting for event '${event}'`));
    }, timeout);
    target.bind(event, handler);
  });
}

/** Collect every emission of `event` on `target` into an array (for "not received" checks). */
export function collect(target, event) {
  const got = [];
  const handler = (data, metadata) => got.push({ data, metadata });
  target.bind(event, handler);
  got.stop = () => target.unbind(event, handler);
  return got;
}

/** Pull a numeric Pusher error code out of any pusher-js `error` emission shape. */
export function errorCode(err) {
  if (!err) return undefined;
  if (err.data && typeof err.data.code === 'number') return err.data.code;
  if (err.error) return errorCode(err.error);
  if (typeof err.code === 'number') return err.code;
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Auth endpoint (Laravel's /broadcasting/auth and /broadcasting/user-auth, done with the Node SDK)
// ---------------------------------------------------------------------------------------------

/**
 * Request parameters understood (form body, as pusher-js sends them, plus `params` options):
 *   user_id, user_name   identity for presence channel_data and user authentication
 *   watchlist            comma separated user ids for signin user_data.watchlist
 * Channel-name conventions: a name containing "forbidden" gets 403 (Laravel's denied callback);
 * a name containing "badsig" is signed with a wrong secret (pushbox must refuse the subscribe).
 */
export async function startAuthServer(server, appName = 'main') {
  const app = server.apps[appName];
  const sdk = makeSdk(server, appName);
  const wrong = new PusherServer({
    appId: app.id, key: app.key, secret: 'not-the-secret', host: server.host, port: String(server.port), useTLS: false,
  });
  const requests = [];
  const srv = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const p = new URLSearchParams(body);
      const userId = req.headers['x-user-id'] || p.get('user_id') || '1';
      const userName = p.get('user_name') || `User ${userId}`;
      requests.push({ url: req.url, params: Object.fromEntries(p), headers: req.headers });
      const send = (status, obj) => {
        res.writeHead(status, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(obj));
      };
      try {
        const socketId = p.get('socket_id');
        if (req.url.startsWith('/broadcasting/auth')) {
          const channel = p.get('channel_name');
          if (channel.includes('forbidden')) return send(403, { message: 'Forbidden' });
          const signer = channel.includes('badsig') ? wrong : sdk;
          if (channel.startsWith('presence-')) {
            return send(200, signer.authorizeChannel(socketId, channel, {
              user_id: userId, user_info: { name: userName },
            }));
          }
          return send(200, signer.authorizeChannel(socketId, channel));
        }
        if (req.url.startsWith('/broadcasting/user-auth')) {
          const userData = { id: userId, user_info: { name: userName } };
          if (p.get('watchlist')) userData.watchlist = p.get('watchlist').split(',');
          return send(200, sdk.authenticateUser(socketId, userData));
        }
        send(404, { message: 'not found' });
      } catch (e) {
        send(500, { message: String(e && e.message) });
      }
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${srv.address().port}`;
  return {
    base,
    authEndpoint: `${base}/broadcasting/auth`,
    userAuthEndpoint: `${base}/broadcasting/user-auth`,
    requests,
    close: () => new Promise((r) => { srv.closeAllConnections?.(); srv.close(() => r()); }),
  };
}

// ---------------------------------------------------------------------------------------------
// SDK and clients
// ---------------------------------------------------------------------------------------------

export function makeSdk(server, appName = 'main', extra = {}) {
  const app = server.apps[appName];
  return new PusherServer({
    appId: app.id, key: app.key, secret: app.secret,
    host: server.host, port: String(server.port), useTLS: false,
    encryptionMasterKeyBase64: MASTER_KEY_B64,
    timeout: 5000,
    ...extra,
  });
}

/** Options for pusher-js pointing at the private pushbox (plain ws, loopback only). */
export function pusherOptions(server, auth, { user = '1', name, params = {}, watchlist, ...rest } = {}) {
  const authParams = { user_id: user, user_name: name || `User ${user}`, ...params };
  if (watchlist) authParams.watchlist = watchlist.join(',');
  const o = {
    cluster: '',
    wsHost: server.host,
    wsPort: server.port,
    wssPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    ...rest,
  };
  if (auth) {
    o.channelAuthorization = { endpoint: auth.authEndpoint, transport: 'ajax', params: authParams };
    o.userAuthentication = { endpoint: auth.userAuthEndpoint, transport: 'ajax', params: authParams };
  }
  return o;
}

/** Tracks clients so each test can disconnect everything it opened. */
export class Clients {
  constructor(server, auth) {
    this.server = server;
    this.auth = auth;
    this.all = [];
  }

  /** A pusher-js client; resolves once `connected` (unless wait:false). */
  async pusher({ app = 'main', wait = true, timeout = 5000, ...opts } = {}) {
    const key = typeof app === 'string' && this.server.apps[app] ? this.server.apps[app].key : app;
    const p = new Pusher(key, pusherOptions(this.server, this.auth, opts));
    this.all.push(p);
    if (wait) await waitConnected(p, timeout);
    return p;
  }

  /** Laravel Echo with pusher-js, as the users' front end configures it. */
  async echo({ broadcaster = 'reverb', app = 'main', user = '1', name, wait = true, extra = {} } = {}) {
    const a = this.server.apps[app];
    const options = {
      broadcaster,
      key: a.key,
      wsHost: this.server.host,
      wsPort: this.server.port,
      wssPort: this.server.port,
      forceTLS: false,
      enabledTransports: ['ws', 'wss'],
      disableStats: true,
      authEndpoint: this.auth.authEndpoint,
      auth: { headers: { 'X-User-Id': user }, params: { user_name: name || `User ${user}` } },
      userAuthentication: {
        endpoint: this.auth.userAuthEndpoint,
        headers: { 'X-User-Id': user },
        params: { user_name: name || `User ${user}` },
      },
      Pusher,
      withoutInterceptors: true,
      ...extra,
    };
    if (broadcaster === 'pusher' && options.cluster === undefined) options.cluster = 'mt1';
    const echo = new Echo(options);
    this.all.push(echo.connector.pusher);
    if (wait) await waitConnected(echo.connector.pusher);
    return echo;
  }

  /** A raw WebSocket for wire-level assertions. */
  async raw(key = this.server.apps.main.key, query = '?protocol=7&client=js&version=8.6.0&flash=false') {
    const r = await RawSocket.open(`ws://${this.server.host}:${this.server.port}/app/${key}${query}`);
    this.all.push(r);
    return r;
  }

  async closeAll() {
    for (const c of this.all.splice(0)) {
      try { c.disconnect ? c.disconnect() : c.close(); } catch { /* ignore */ }
    }
    await sleep(50);
  }
}

export async function waitConnected(p, timeout = 5000) {
  if (p.connection.state === 'connected') return p;
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      p.connection.unbind('state_change', h);
      reject(new Error(`pusher-js did not reach 'connected' within ${timeout} ms (state ${p.connection.state})`));
    }, timeout);
    const h = ({ current }) => {
      if (current === 'connected') {
        clearTimeout(t);
        p.connection.unbind('state_change', h);
        resolve();
      }
    };
    p.connection.bind('state_change', h);
  });
  return p;
}

/** Subscribe through pusher-js and wait for pusher:subscription_succeeded. */
export async function subscribe(p, channelName, timeout = 5000) {
  const ch = p.subscribe(channelName);
  if (ch.subscribed) return ch;
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => { cleanup(); reject(new Error(`subscription to ${channelName} not confirmed within ${timeout} ms`)); }, timeout);
    const ok = () => { cleanup(); resolve(); };
    const err = (e) => { cleanup(); reject(new Error(`subscription_error on ${channelName}: ${JSON.stringify(e)}`)); };
    const cleanup = () => {
      clearTimeout(t);
      ch.unbind('pusher:subscription_succeeded', ok);
      ch.unbind('pusher:subscription_error', err);
    };
    ch.bind('pusher:subscription_succeeded', ok);
    ch.bind('pusher:subscription_error', err);
  });
  return ch;
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket
// ---------------------------------------------------------------------------------------------

export class RawSocket {
  static open(url, timeout = 5000) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      const r = new RawSocket(ws);
      const t = setTimeout(() => { ws.terminate(); reject(new Error(`raw ws open timeout ${url}`)); }, timeout);
      ws.once('open', () => { clearTimeout(t); resolve(r); });
      ws.once('error', (e) => { clearTimeout(t); reject(e); });
    });
  }

  constructor(ws) {
    this.ws = ws;
    this.frames = []; // parsed JSON objects (or {__raw: string})
    this.closed = null;
    this.waiters = [];
    ws.on('message', (buf, isBinary) => {
      const text = buf.toString('utf8');
      let f;
      try { f = JSON.parse(text); } catch { f = { __raw: text }; }
      f.__text = text;
      this.frames.push(f);
      this._poke();
    });
    ws.on('close', (code, reason) => { this.closed = { code, reason: reason.toString() }; this._poke(); });
    ws.on('error', () => {});
  }

  _poke() { for (const w of this.waiters.slice()) w(); }

  send(obj) { this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj)); }

  /** Next frame (from index `from`) matching pred. */
  next(pred = () => true, { timeout = 5000, from = 0 } = {}) {
    return new Promise((resolve, reject) => {
      const check = () => {
        for (let i = from; i < this.frames.length; i++) {
          if (pred(this.frames[i])) { done(); resolve(this.frames[i]); return true; }
        }
        return false;
      };
      const done = () => { clearTimeout(t); this.waiters = this.waiters.filter((w) => w !== check); };
      const t = setTimeout(() => { done(); reject(new Error(`raw ws: no matching frame within ${timeout} ms; frames: ${this.frames.map((f) => f.__text).join(' | ').slice(0, 2000)}`)); }, timeout);
      if (!check()) this.waiters.push(check);
    });
  }

  event(name, opts) { return this.next((f) => f.event === name, opts); }

  waitClose(timeout = 5000) {
    return waitUntil(() => this.closed, { timeout, what: 'raw ws close' });
  }

  async established() {
    const f = await this.event('pusher:connection_established');
    const d = JSON.parse(f.data);
    this.socketId = d.socket_id;
    return d;
  }

  close() { try { this.ws.close(); } catch { /* ignore */ } }
  disconnect() { this.close(); }
}

// ---------------------------------------------------------------------------------------------
// Hand-signed HTTP API requests (PUSHER.md §7.2)
// ---------------------------------------------------------------------------------------------

const md5 = (s) => crypto.createHash('md5').update(s).digest('hex');
const hmac = (secret, s) => crypto.createHmac('sha256', secret).update(s).digest('hex');

/**
 * Send a signed API request the way an SDK would.
 *  style 'php'  : query built with percent-encoding (PHP http_build_query / Guzzle),
 *                 headers as pusher-http-php sends them.
 *  style 'node' : raw values.
 * `timestamp` lets a test send a stale auth_timestamp. `secret` lets it sign with a wrong secret.
 */
export async function signedRequest(server, {
  app = 'main', method = 'POST', path, query = {}, body, timestamp, secret, style = 'node', bodyMd5OnGet = false,
  sendBody, key,
}) {
  const a = typeof app === 'string' ? server.apps[app] : app;
  const bodyText = body === undefined ? '' : (typeof body === 'string' ? body : JSON.stringify(body));
  const params = {
    auth_key: key ?? a.key,
    auth_timestamp: String(timestamp ?? Math.floor(Date.now() / 1000)),
    auth_version: '1.0',
    ...query,
  };
  if (bodyText !== '' || bodyMd5OnGet) params.body_md5 = md5(bodyText);
  const toSign = Object.keys(params).map((k) => k.toLowerCase()).sort()
    .map((k) => `${k}=${params[k]}`).join('&');
  const sig = hmac(secret ?? a.secret, `${method}\n${path}\n${toSign}`);
  const enc = style === 'php'
    ? (s) => encodeURIComponent(s).replace(/%20/g, '+')
    : (s) => s;
  const qs = Object.entries({ ...params, auth_signature: sig }).map(([k, v]) => `${enc(k)}=${enc(v)}`).join('&');
  const headers = { 'Content-Type': 'application/json' };
  if (style === 'php') {
    headers['X-Pusher-Library'] = 'pusher-http-php 7.2.7';
  }
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(), 5000);
  try {
    const res = await fetch(`${server.base}${path}?${qs}`, {
      method, headers, body: method === 'GET' ? undefined : (sendBody ?? bodyText), signal: ac.signal,
    });
    const text = await res.text();
    let json;
    try { json = JSON.parse(text); } catch { json = undefined; }
    return { status: res.status, text, json, headers: res.headers };
  } finally {
    clearTimeout(t);
  }
}

/** The body Laravel's PusherBroadcaster + pusher-http-php ≥ 7.2 sends for one channel. */
export function phpTriggerBody(channel, name, payload, socketId) {
  const b = { name, data: JSON.stringify(payload), channel };
  if (socketId) b.socket_id = socketId;
  return b;
}
