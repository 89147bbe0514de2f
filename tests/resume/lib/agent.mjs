// The client side of the resume tests, run INSIDE the clients' network namespace
// (`ip netns exec <ns> node agent.mjs`), so every socket it opens crosses the veth link the test
// cuts. It holds real pusher-js instances (node build, as a shop terminal runs it), an auth
// endpoint standing in for Laravel's /broadcasting/auth and /broadcasting/user-auth (on the
// namespace's own loopback, so it stays reachable during a cut, as the shop's page server would
// be for a browser that kept its tab), and, on request, Debian's chromium with a Laravel Echo page.
//
// Protocol: one JSON object per line. The test writes commands {id, op, ...} on stdin; the agent
// answers {id, ok, result} or {id, ok:false, error}, and streams what the clients see as
// {ev:'msg'|'state'|'error'|'log', client, ...} lines on stdout, each with the time `t` (ms).
import readline from 'node:readline';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Pusher, PusherServer } from '../../clients/lib/helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

const out = (o) => process.stdout.write(JSON.stringify({ t: Date.now(), ...o }) + '\n');
const clients = new Map();
const deny = new Set(); // channel names the auth endpoint now refuses (403)
let signer = null;
let authBase = null;
let browser = null;

process.on('uncaughtException', (e) => out({ ev: 'log', level: 'error', text: String(e && e.stack || e) }));
process.on('unhandledRejection', (e) => out({ ev: 'log', level: 'error', text: String(e && e.stack || e) }));

/** The auth endpoint: Laravel's channel callbacks say yes unless the test put the channel in `deny`. */
function handleAuth(req, res, body) {
  const p = new URLSearchParams(body);
  const send = (status, obj) => {
    res.writeHead(status, { 'Content-Type': 'application/json', 'Access-Control-Allow-Origin': '*' });
    res.end(JSON.stringify(obj));
  };
  const socketId = p.get('socket_id');
  const user = p.get('user_id') || req.headers['x-user-id'] || '1';
  if (req.url.startsWith('/auth')) {
    const channel = p.get('channel_name');
    out({ ev: 'auth', channel, socketId, denied: deny.has(channel) });
    if (deny.has(channel)) return send(403, { message: 'Forbidden' });
    if (channel.startsWith('presence-')) {
      return send(200, signer.authorizeChannel(socketId, channel, { user_id: user, user_info: { name: `User ${user}` } }));
    }
    return send(200, signer.authorizeChannel(socketId, channel));
  }
  if (req.url.startsWith('/user-auth')) {
    return send(200, signer.authenticateUser(socketId, { id: user, user_info: { name: `User ${user}` } }));
  }
  return send(404, { message: 'not found' });
}

async function startAuth(app) {
  signer = new PusherServer({ appId: app.id, key: app.key, secret: app.secret, host: '127.0.0.1', useTLS: false });
  const srv = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      try { handleAuth(req, res, body); } catch (e) { res.writeHead(500); res.end(String(e)); }
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  authBase = `http://127.0.0.1:${srv.address().port}`;
  return authBase;
}

/** pusher-js options as a shop terminal would set them, plus the resume token under wsPath/httpPath. */
function pusherOptions({ host, port, token, transports = ['ws'], user = '1', pongTimeout = 2000 }) {
  const o = {
    cluster: '',
    wsHost: host, wsPort: port, wssPort: port,
    httpHost: host, httpPort: port,
    forceTLS: false,
    enabledTransports: transports,
    disableStats: true,
    pongTimeout,
    channelAuthorization: { endpoint: `${authBase}/auth`, transport: 'ajax', params: { user_id: user } },
    userAuthentication: { endpoint: `${authBase}/user-auth`, transport: 'ajax', params: { user_id: user } },
  };
  // RESUME_TOKENLESS=1 (harness self-check): run every case without the token, so the cases
  // that need resume show how they fail on a pushbox that does not replay.
  if (token && !process.env.RESUME_TOKENLESS) {
    o.wsPath = `/r/${token}`;
    o.httpPath = `/pusher/r/${token}`;
  }
  return o;
}

const ops = {
  async init({ app }) {
    return { authBase: await startAuth(app) };
  },

  /** A new Pusher instance `name`; resolves once it is connected (bounded by `timeout`). */
  async pusher({ name, key, timeout = 10000, signin = false, ...o }) {
    if (clients.has(name)) throw new Error(`client ${name} exists`);
    const p = new Pusher(key, pusherOptions(o));
    clients.set(name, p);
    p.connection.bind('state_change', ({ previous, current }) => {
      out({ ev: 'state', client: name, previous, current, socketId: p.connection.socket_id ?? null });
    });
    p.connection.bind('error', (e) => out({ ev: 'error', client: name, error: JSON.stringify(e).slice(0, 300) }));
    if (signin) {
      // pusher-js emits nothing on success (only signin_error): watch the connection's messages.
      p.connection.bind('message', (m) => {
        if (m.event === 'pusher:signin_success') out({ ev: 'msg', client: name, channel: null, event: m.event, socketId: p.connection.socket_id });
      });
      p.user.bind('pusher:signin_error', (e) => out({ ev: 'msg', client: name, channel: null, event: 'pusher:signin_error', data: e }));
      p.signin();
    }
    await new Promise((resolve, reject) => {
      if (p.connection.state === 'connected') return resolve();
      const t = setTimeout(() => reject(new Error(`client ${name} not connected within ${timeout} ms (state ${p.connection.state})`)), timeout);
      p.connection.bind('connected', () => { clearTimeout(t); resolve(); });
    });
    return { socketId: p.connection.socket_id };
  },

  /** Subscribe and stream every event of the channel (subscription_succeeded/error included). */
  async subscribe({ client, channel }) {
    const p = clients.get(client);
    if (!p) throw new Error(`no client ${client}`);
    const ch = p.subscribe(channel);
    ch.bind_global((event, data) => {
      out({ ev: 'msg', client, channel, event, data, socketId: p.connection.socket_id ?? null });
    });
    return {};
  },

  async info({ client }) {
    const p = clients.get(client);
    if (!p) throw new Error(`no client ${client}`);
    return { socketId: p.connection.socket_id ?? null, state: p.connection.state };
  },

  async disconnect({ client }) {
    const p = clients.get(client);
    if (p) p.disconnect();
    clients.delete(client);
    return {};
  },

  async deny({ channel, on = true }) {
    if (on) deny.add(channel); else deny.delete(channel);
    return {};
  },

  /** Debian's chromium with the Echo page (tests/resume/page/echo.html), see browser.mjs. */
  async browser(args) {
    const { openBrowser } = await import(pathToFileURL(path.join(here, 'browser.mjs')).href);
    browser = await openBrowser({ ...args, authBase, out, signer, deny });
    return browser.info;
  },

  async browserShot({ file }) {
    if (!browser) throw new Error('no browser');
    await browser.shot(file);
    return {};
  },

  async browserGoto({ where }) {
    if (!browser) throw new Error('no browser');
    await browser.goto(where);
    return {};
  },

  async browserClose() {
    if (browser) await browser.close();
    browser = null;
    return {};
  },

  /** What the page holds: received events, the list it shows, its connection states. */
  async browserState() {
    if (!browser) throw new Error('no browser');
    return browser.state();
  },

  async exit() {
    for (const p of clients.values()) { try { p.disconnect(); } catch { /* ignore */ } }
    if (browser) await browser.close().catch(() => {});
    setTimeout(() => process.exit(0), 50);
    return {};
  },
};

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  let cmd;
  try { cmd = JSON.parse(line); } catch { return out({ ev: 'log', level: 'error', text: `bad command ${line}` }); }
  const op = ops[cmd.op];
  if (!op) return out({ id: cmd.id, ok: false, error: `unknown op ${cmd.op}` });
  try {
    out({ id: cmd.id, ok: true, result: await op(cmd) });
  } catch (e) {
    out({ id: cmd.id, ok: false, error: String(e && e.message || e) });
  }
});
// The test process went away: leave no client behind.
rl.on('close', () => {
  for (const p of clients.values()) { try { p.disconnect(); } catch { /* ignore */ } }
  Promise.resolve(browser && browser.close()).catch(() => {}).finally(() => process.exit(0));
});
