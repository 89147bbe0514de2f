// TLS termination (issue 5) with the real clients: pushbox serves [tls] on 127.0.0.1 with the
// certificate `pushbox cert self-signed --host localhost --ip 127.0.0.1` wrote.
//
// Trust: this test process does NOT trust the certificate (NODE_EXTRA_CA_CERTS is read only when
// node starts), which makes it the negative case. The positive pusher-js / Echo / Node SDK case
// runs in a child node process started with NODE_EXTRA_CA_CERTS=<pushbox.crt> (lib/tls.mjs).
// In-process, the Node SDK is given the certificate through its `agent` option.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import tls from 'node:tls';
import https from 'node:https';
import { X509Certificate } from 'node:crypto';
import { startTlsServer, runNodeChild, get } from '../lib/tls.mjs';
import { freePort } from '../lib/server.mjs';
import { makeSdk, RawSocket, SOCKET_ID_RE } from '../lib/helpers.mjs';

let server;
let closedPort;

before(async () => {
  server = await startTlsServer();
  closedPort = await freePort(); // nothing listens here: a client falling back to ws:// would fail
});
after(async () => { await server?.stop(); });

const AEAD = /GCM|CHACHA20|CCM/;

/** One TLS handshake; resolves {protocol, alpn, cipher} or rejects with the handshake error. */
function handshake(opts) {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: server.tlsPort, servername: 'localhost', ca: server.ca, ...opts });
    const t = setTimeout(() => { s.destroy(); reject(new Error('handshake timeout')); }, 5000);
    s.once('secureConnect', () => {
      clearTimeout(t);
      const r = { protocol: s.getProtocol(), alpn: s.alpnProtocol, cipher: s.getCipher().name, authorized: s.authorized };
      s.end();
      resolve(r);
    });
    s.once('error', (e) => { clearTimeout(t); reject(e); });
  });
}

describe('certificate from `pushbox cert self-signed`', () => {
  it('names localhost and 127.0.0.1, is self-signed, EC P-256', () => {
    const x = new X509Certificate(server.ca);
    assert.match(x.subjectAltName, /DNS:localhost/);
    assert.match(x.subjectAltName, /IP Address:127\.0\.0\.1/);
    assert.equal(x.checkIssued(x), true, 'self-signed');
    assert.equal(x.publicKey.asymmetricKeyDetails.namedCurve, 'prime256v1');
    assert.match(server.certOutput, /NODE_EXTRA_CA_CERTS=/, 'says how to trust it in Node');
  });

  it('default validity is within Apple\'s 825-day limit for TLS server certificates', () => {
    // macOS/iOS reject a TLS server certificate valid for more than 825 days (even from a
    // user-trusted authority); the default --days 825 must give notAfter - notBefore <= 825 days.
    const x = new X509Certificate(server.ca);
    const days = (Date.parse(x.validTo) - Date.parse(x.validFrom)) / 86400000;
    assert.ok(days <= 825, `validity is ${days} days (${x.validFrom} .. ${x.validTo}); Apple clients refuse > 825`);
  });
});

describe('TLS listener (wire)', () => {
  it('TLS 1.3 with an AEAD suite, ALPN http/1.1 even when h2 is offered first, trusted via the cert', async () => {
    const r = await handshake({ ALPNProtocols: ['h2', 'http/1.1'] });
    assert.equal(r.protocol, 'TLSv1.3');
    assert.equal(r.alpn, 'http/1.1');
    assert.match(r.cipher, AEAD);
    assert.equal(r.authorized, true);
  });

  it('TLS 1.2 only: an ECDHE AEAD suite', async () => {
    const r = await handshake({ maxVersion: 'TLSv1.2' });
    assert.equal(r.protocol, 'TLSv1.2');
    assert.match(r.cipher, /^ECDHE-/);
    assert.match(r.cipher, AEAD);
  });

  it('TLS 1.2 with only CBC suites offered is refused', async () => {
    await assert.rejects(handshake({ maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA' }));
  });

  it('TLS 1.1 and 1.0 are refused by the server', async () => {
    // SECLEVEL=0 lets this client offer them at all; the failure must come from the server.
    const err = await handshake({ minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0' })
      .then(() => null, (e) => e);
    assert.ok(err, 'a TLS 1.1 handshake must fail');
    // rustls answers a TLS 1.0/1.1-only ClientHello with a fatal alert (handshake_failure).
    assert.match(String(err.code), /ALERT/, `expected a server alert, got ${err.code}: ${err.message}`);
  });

  it('GET /up over https; the plain listener keeps serving beside it', async () => {
    const s = await get(`https://localhost:${server.tlsPort}/up`, { ca: server.ca });
    assert.equal(s.status, 200);
    const p = await get(`http://127.0.0.1:${server.port}/up`);
    assert.equal(p.status, 200);
  });

  it('an untrusting client is refused by its own verification (self-signed)', async () => {
    await assert.rejects(get(`https://localhost:${server.tlsPort}/up`), (e) => {
      assert.match(String(e.code), /SELF_SIGNED|UNABLE_TO_VERIFY|CERT/);
      return true;
    });
  });

  it('raw wss:// gets connection_established with a socket id', async () => {
    const WebSocketCtor = (await import('ws')).default;
    const ws = new WebSocketCtor(`wss://localhost:${server.tlsPort}/app/main-key?protocol=7&client=js&version=8.6.0`, { ca: server.ca });
    const r = new RawSocket(ws);
    try {
      const d = await r.established();
      assert.match(d.socket_id, SOCKET_ID_RE);
    } finally { r.close(); }
  });
});

describe('Node SDK over https in-process (certificate via the `agent` option)', () => {
  it('trigger and GET /channels succeed with agent {ca}', async () => {
    const agent = new https.Agent({ ca: server.ca, keepAlive: false });
    const sdk = makeSdk(server, 'main', { useTLS: true, host: 'localhost', port: String(server.tlsPort), agent });
    const r = await sdk.trigger('tls-public', 'ping', { n: 1 });
    assert.equal(r.status, 200);
    const c = await sdk.get({ path: '/channels', params: {} });
    assert.equal(c.status, 200);
    assert.deepEqual(Object.keys(await c.json()), ['channels']);
  });

  it('without the certificate the SDK rejects with a TLS verification error', async () => {
    const sdk = makeSdk(server, 'main', { useTLS: true, host: 'localhost', port: String(server.tlsPort) });
    await assert.rejects(sdk.trigger('tls-public', 'ping', {}), (e) => {
      const text = `${e?.message} ${e?.error?.code || ''} ${e?.cause?.code || ''}`;
      assert.match(text, /self[- ]signed|SELF_SIGNED|certificate/i);
      return true;
    });
  });
});

describe('pusher-js, Laravel Echo and the Node SDK trusting the certificate (NODE_EXTRA_CA_CERTS)', () => {
  const params = () => ({
    port: server.port, tlsPort: server.tlsPort, apps: server.apps, wsHost: 'localhost', closedPort,
  });

  it('pusher-js forceTLS: wss, private channel, event from the SDK over https; Echo reverb likewise', async () => {
    const r = await runNodeChild('trusted', params(), { env: { NODE_EXTRA_CA_CERTS: server.certPath } });
    const steps = Object.fromEntries(r.steps.map((s) => [s.name, s]));
    assert.equal(r.ok, true, `child failed: ${r.error}\nsteps: ${JSON.stringify(r.steps)}\nlog:\n${server.log()}`);
    assert.equal(r.extraCa, server.certPath);
    const pc = steps['pusher-js connected'];
    assert.match(pc.socketId, SOCKET_ID_RE);
    assert.match(pc.url, new RegExp(`^wss://localhost:${server.tlsPort}/app/main-key`));
    assert.equal(steps['sdk trigger'].status, 200);
    assert.deepEqual(steps['pusher-js event'].data, { id: 42, via: 'https' });
    assert.equal(steps['sdk get /channels'].status, 200);
    assert.ok('private-tls-orders' in steps['sdk get /channels'].body.channels);
    const ec = steps['echo connected'];
    assert.match(ec.socketId, SOCKET_ID_RE);
    assert.match(ec.url, new RegExp(`^wss://localhost:${server.tlsPort}/`));
    assert.deepEqual(steps['echo event'].data, { companyId: 1, progress: 50 });
  });

  it('without NODE_EXTRA_CA_CERTS pusher-js never connects and the SDK rejects', async () => {
    const r = await runNodeChild('untrusted', { ...params(), waitMs: 4000 });
    assert.equal(r.ok, true, `child failed: ${r.error}`);
    assert.equal(r.extraCa, null);
    const steps = Object.fromEntries(r.steps.map((s) => [s.name, s]));
    assert.equal(steps['pusher-js'].connected, false, JSON.stringify(steps['pusher-js']));
    assert.equal(steps.sdk.rejected, true);
    assert.match(`${steps.sdk.error} ${steps.sdk.cause}`, /self[- ]signed|SELF_SIGNED|certificate/i);
  });
});

describe('TLS only (server.plain = false)', () => {
  it('no plain listener; wss and https work', async () => {
    const only = await startTlsServer({ server: { plain: false } });
    try {
      await assert.rejects(get(`http://127.0.0.1:${only.port}/up`, { timeout: 1000 }), /ECONNREFUSED/);
      const s = await get(`https://localhost:${only.tlsPort}/up`, { ca: only.ca });
      assert.equal(s.status, 200);
      const WebSocketCtor = (await import('ws')).default;
      const r = new RawSocket(new WebSocketCtor(`wss://127.0.0.1:${only.tlsPort}/app/main-key?protocol=7`, { ca: only.ca }));
      try { assert.match((await r.established()).socket_id, SOCKET_ID_RE); } finally { r.close(); }
    } finally {
      await only.stop();
    }
  });
});
