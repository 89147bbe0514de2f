// Pieces of the browser check: a page server on 127.0.0.1 (the shop's page, the vendor bundles
// and Laravel's /broadcasting/auth, signed with the Node `pusher` SDK), and a small proxy in
// front of pushbox that refuses WebSocket upgrades (like a corporate proxy) and forwards every
// other request, streaming responses included.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import PusherServer from 'pusher';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');

const FILES = {
  '/': [path.join(root, 'page', 'index.html'), 'text/html; charset=utf-8'],
  '/vendor/pusher.js': [path.join(root, 'node_modules', 'pusher-js', 'dist', 'web', 'pusher.js'), 'text/javascript'],
  '/vendor/echo.iife.js': [path.join(root, 'node_modules', 'laravel-echo', 'dist', 'echo.iife.js'), 'text/javascript'],
};

export function makeSdk(server, appName = 'main') {
  const app = server.apps[appName];
  return new PusherServer({
    appId: app.id, key: app.key, secret: app.secret,
    host: server.host, port: String(server.port), useTLS: false, timeout: 5000,
  });
}

function listen(srv) {
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve(srv.address().port)));
}

function close(srv) {
  return new Promise((resolve) => { srv.closeAllConnections?.(); srv.close(() => resolve()); });
}

/** The shop: serves the page and signs private-channel subscriptions like Laravel would. */
export async function startPageServer(sdk) {
  const authRequests = [];
  const srv = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (req.method === 'POST' && url.pathname === '/broadcasting/auth') {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c) => { body += c; });
      req.on('end', () => {
        const p = new URLSearchParams(body);
        const socketId = p.get('socket_id');
        const channel = p.get('channel_name');
        authRequests.push({ socketId, channel });
        // routes/channels.php: Broadcast::channel('company.{id}', fn ($user, $id) => $id == 1)
        if (channel !== 'private-company.1') {
          res.writeHead(403, { 'Content-Type': 'application/json' });
          res.end('{"message":"Forbidden"}');
          return;
        }
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(sdk.authorizeChannel(socketId, channel)));
      });
      return;
    }
    const file = FILES[url.pathname];
    if (req.method === 'GET' && file) {
      res.writeHead(200, { 'Content-Type': file[1], 'Cache-Control': 'no-store' });
      fs.createReadStream(file[0]).pipe(res);
      return;
    }
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found');
  });
  const port = await listen(srv);
  return { port, base: `http://127.0.0.1:${port}`, authRequests, close: () => close(srv) };
}

/**
 * A proxy that answers every WebSocket upgrade with 403 and forwards everything else.
 * With `buffer: true` it also holds each response body until it is complete (as some antivirus
 * and corporate proxies do), which starves xhr_streaming: only polling can work through it.
 */
export async function startNoUpgradeProxy(targetPort, { buffer = false } = {}) {
  const stats = { upgradesRefused: 0, forwarded: {} };
  const srv = http.createServer((req, res) => {
    const kind = (req.url.split('?')[0].match(/\/(xhr_streaming|xhr_send|xhr)$/) || [null, 'other'])[1];
    const key = `${req.method} ${kind}`;
    stats.forwarded[key] = (stats.forwarded[key] || 0) + 1;
    const up = http.request({
      host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers: req.headers,
    }, (ures) => {
      if (!buffer) {
        res.writeHead(ures.statusCode, ures.headers);
        ures.pipe(res);
        return;
      }
      const parts = [];
      ures.on('data', (c) => parts.push(c));
      ures.on('end', () => {
        const body = Buffer.concat(parts);
        const headers = { ...ures.headers, 'content-length': String(body.length) };
        delete headers['transfer-encoding'];
        res.writeHead(ures.statusCode, headers);
        res.end(body);
      });
    });
    up.on('error', () => res.destroy());
    // The browser aborting (stream rollover, page closed) aborts the upstream request too.
    res.on('close', () => up.destroy());
    req.pipe(up);
  });
  srv.on('upgrade', (req, socket) => {
    stats.upgradesRefused++;
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 31\r\nConnection: close\r\n\r\nWebSocket blocked by the proxy\n');
  });
  const port = await listen(srv);
  return { port, stats, close: () => close(srv) };
}
