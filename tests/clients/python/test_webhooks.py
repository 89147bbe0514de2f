"""Webhooks from pushbox accepted by the official Python SDK's `validate_webhook` (which checks
the key, the HMAC of the raw body and that `time_ms` is within 300 s), with the header names
exactly as PHP reads them."""
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pusher
import pytest
import websocket

from conftest import APPS, PUSHBOX_BIN, _free_port, _toml


class Receiver:
    """A real HTTP receiver on 127.0.0.1 that records (raw header names, headers, body)."""

    def __init__(self):
        self.got = queue.Queue()
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                got.put(([k for k, _ in self.headers.items()], dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def next(self, timeout=8):
        return self.got.get(timeout=timeout)

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def hooked():
    rx = Receiver()
    tmp = tempfile.mkdtemp(prefix="pushbox-py-hooks-")
    port = _free_port()
    app = APPS["main"]
    cfg = os.path.join(tmp, "pushbox.toml")
    with open(cfg, "w") as f:
        f.write("\n".join([
            "state_dir = %s" % _toml(os.path.join(tmp, "state")),
            "[server]", 'host = "127.0.0.1"', "port = %d" % port,
            "[webhooks]", "batch_ms = 20",
            "[[apps]]"] + ["%s = %s" % (k, _toml(v)) for k, v in app.items()] + [
            "webhook_url = %s" % _toml("http://127.0.0.1:%d/pusher/webhook" % rx.port), ""]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVERB_", "PUSHER_", "PUSHBOX_"))}
    log = open(os.path.join(tmp, "pushbox.log"), "ab")
    proc = subprocess.Popen([PUSHBOX_BIN, "serve", "--config", cfg], env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.time() + 20
    while True:
        assert proc.poll() is None, "pushbox exited early"
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/up" % port, timeout=1) as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        assert time.time() < deadline, "pushbox did not answer /up within 20 s"
        time.sleep(0.1)
    yield port, rx
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    rx.close()
    shutil.rmtree(tmp, ignore_errors=True)


def test_validate_webhook_accepts_channel_occupied_and_vacated(hooked):
    port, rx = hooked
    app = APPS["main"]
    sdk = pusher.Pusher(app_id=app["id"], key=app["key"], secret=app["secret"])
    ws = websocket.create_connection("ws://127.0.0.1:%d/app/%s?protocol=7&client=py" % (port, app["key"]), timeout=5)
    assert json.loads(ws.recv())["event"] == "pusher:connection_established"
    ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": "py-hook", "auth": ""}}))
    assert json.loads(ws.recv())["event"] == "pusher_internal:subscription_succeeded"
    ws.close()

    seen = []
    deadline = time.time() + 10
    while {"channel_occupied", "channel_vacated"} - {e["name"] for e in seen}:
        assert time.time() < deadline, "webhooks did not arrive: %r" % seen
        names, headers, body = rx.next()
        # Exact header names and content type, as the PHP SDK and Node's validator need them.
        assert "X-Pusher-Key" in names and "X-Pusher-Signature" in names, names
        assert headers["Content-Type"] == "application/json"
        hook = sdk.validate_webhook(key=headers["X-Pusher-Key"], signature=headers["X-Pusher-Signature"],
                                    body=body.decode("utf-8"))
        assert hook is not None, "validate_webhook refused %r" % body
        assert abs(hook["time_ms"] / 1000 - time.time()) < 300
        seen += [e for e in hook["events"] if e.get("channel") == "py-hook"]
    assert {e["name"] for e in seen} >= {"channel_occupied", "channel_vacated"}

    # The same validator refuses a body that was changed on the way, or another app's key.
    tampered = body.decode("utf-8").replace("py-hook", "py-hooX")
    assert sdk.validate_webhook(key=headers["X-Pusher-Key"], signature=headers["X-Pusher-Signature"], body=tampered) is None
    assert sdk.validate_webhook(key="other-key", signature=headers["X-Pusher-Signature"], body=body.decode("utf-8")) is None
