"""pusher-http-python 3.x over https against pushbox's TLS listener (see tls_helpers.py)."""
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request

import pusher
import pytest
import requests
import websocket

from tls_helpers import ca_backend, start_tls_server


@pytest.fixture(scope="module")
def tls_server():
    srv = start_tls_server()
    yield srv
    srv.stop()


def sdk(srv, **kw):
    a = srv.apps["main"]
    return pusher.Pusher(app_id=a["id"], key=a["key"], secret=a["secret"], ssl=True,
                         host="localhost", port=srv.tls_port, timeout=5, **kw)


class WSS:
    """Pusher-protocol client over websocket-client (wss, trusting the test certificate)."""

    def __init__(self, srv):
        url = "wss://localhost:%d/app/%s?protocol=7&client=python-test&version=1.0" % (
            srv.tls_port, srv.apps["main"]["key"])
        self.ws = websocket.create_connection(url, timeout=5, sslopt={"ca_certs": srv.cert})
        self.frames = []
        est = self.wait(lambda f: f.get("event") == "pusher:connection_established")
        self.socket_id = json.loads(est["data"])["socket_id"]
        self.tls_version = self.ws.sock.version()

    def wait(self, pred, timeout=5.0):
        for f in self.frames:
            if pred(f):
                return f
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.ws.settimeout(max(0.05, deadline - time.time()))
            try:
                text = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                break
            f = json.loads(text)
            self.frames.append(f)
            if pred(f):
                return f
        raise AssertionError("no matching frame within %ss; frames: %r" % (timeout, self.frames))

    def close(self):
        self.ws.close()


def test_trigger_and_channels_info_over_https_with_ca_backend(tls_server):
    client = sdk(tls_server, backend=ca_backend(tls_server.cert))
    ws = WSS(tls_server)
    try:
        assert ws.tls_version in ("TLSv1.2", "TLSv1.3")
        ws.ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": "py-tls"}}))
        ws.wait(lambda f: f.get("event") == "pusher_internal:subscription_succeeded")

        assert client.trigger("py-tls", "py.event", {"n": 1}) == {}
        ev = ws.wait(lambda f: f.get("event") == "py.event")
        assert ev["channel"] == "py-tls"
        assert json.loads(ev["data"]) == {"n": 1}

        assert client.trigger_batch([{"channel": "py-tls", "name": "py.batch", "data": {"n": 2}}]) == {}
        ev = ws.wait(lambda f: f.get("event") == "py.batch")
        assert json.loads(ev["data"]) == {"n": 2}

        info = client.channels_info()
        assert "py-tls" in info["channels"]
        assert client.channel_info("py-tls") == {"occupied": True}
    finally:
        ws.close()


def test_without_the_ca_the_sdk_fails_with_a_tls_error(tls_server):
    client = sdk(tls_server)  # pusher's bundled cacert.pem only
    with pytest.raises(requests.exceptions.SSLError) as e:
        client.trigger("py-tls", "never", {})
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)


def test_plain_requests_and_ssl_trust_the_ca_file(tls_server):
    # What REQUESTS_CA_BUNDLE / SSL_CERT_FILE achieve for plain requests / urllib users.
    assert requests.get(tls_server.tls_base + "/up", verify=tls_server.cert, timeout=5).status_code == 200
    ctx = ssl.create_default_context(cafile=tls_server.cert)
    with urllib.request.urlopen(tls_server.tls_base + "/up", timeout=5, context=ctx) as r:
        assert r.status == 200


def test_the_trust_hint_of_pushbox_cert_works_for_the_python_sdk(tls_server):
    """`pushbox cert self-signed` tells Python users how to make the pusher SDK trust the
    certificate. pusher 3.x ignores REQUESTS_CA_BUNDLE (its RequestsBackend pins its bundled
    cacert.pem when ssl=True), so the hint must name the backend= way, and following it in a
    fresh interpreter must let the SDK trigger over https."""
    hint = [l for l in tls_server.cert_output.splitlines() if "Python pusher SDK" in l]
    assert hint, tls_server.cert_output
    assert "backend=" in hint[0] and "self.options['verify']" in hint[0], hint[0]
    a = tls_server.apps["main"]
    code = (
        "import pusher, pusher.requests\n"
        "class CABackend(pusher.requests.RequestsBackend):\n"
        "    def __init__(self, client, **o):\n"
        "        super().__init__(client, **o)\n"
        "        self.options['verify'] = %r\n"
        "c = pusher.Pusher(app_id=%r, key=%r, secret=%r, ssl=True, host='localhost', port=%d, timeout=5, backend=CABackend)\n"
        "print(c.trigger('py-tls', 'hint', {}))\n" % (tls_server.cert, a["id"], a["key"], a["secret"], tls_server.tls_port)
    )
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, "the hinted backend does not make the pusher SDK trust the certificate:\n%s" % r.stderr[-600:]
