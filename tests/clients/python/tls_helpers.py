"""A private pushbox with [tls] for test_tls.py (same apps as conftest.py).

The certificate comes from `pushbox cert self-signed --host localhost --ip 127.0.0.1`.

How the Python SDK (pusher 3.x) is made to trust it: with ssl=True its RequestsBackend passes
`verify=<pusher's bundled cacert.pem>` on every request, so REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE
are ignored (requests only reads them when verify is True/None) and a `verify=` backend option is
overwritten. The working way is the public `backend=` parameter with a RequestsBackend whose
`verify` is the CA file: `ca_backend(path)` below.
"""
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request

from pusher.requests import RequestsBackend

from conftest import APPS, PUSHBOX_BIN, _free_port, _toml


def ca_backend(ca_path):
    """A RequestsBackend that verifies the server against ca_path (instead of pusher's bundle)."""

    class CABackend(RequestsBackend):
        def __init__(self, client, **options):
            super().__init__(client, **options)
            self.options["verify"] = ca_path

    return CABackend


class TlsServer:
    def __init__(self, tmp, port, tls_port, cert, key, proc, log_path):
        self.host = "127.0.0.1"
        self.tmp, self.port, self.tls_port = tmp, port, tls_port
        self.cert, self.key = cert, key
        self.proc, self.log_path = proc, log_path
        self.apps = APPS
        self.base = "http://127.0.0.1:%d" % port
        self.tls_base = "https://localhost:%d" % tls_port

    def log(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
        if not os.environ.get("KEEP_PUSHBOX_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)


def start_tls_server():
    if not os.path.exists(PUSHBOX_BIN):
        raise RuntimeError("pushbox binary not found at %s; run cargo build" % PUSHBOX_BIN)
    tmp = tempfile.mkdtemp(prefix="pushbox-py-tls-")
    state = os.path.join(tmp, "state")
    certdir = os.path.join(tmp, "cert")
    os.mkdir(state)
    os.mkdir(certdir)
    gen = subprocess.run([PUSHBOX_BIN, "cert", "self-signed", "--host", "localhost", "--ip", "127.0.0.1",
                          "--out", certdir], check=True, capture_output=True, text=True, timeout=10)
    cert = os.path.join(certdir, "pushbox.crt")
    key = os.path.join(certdir, "pushbox.key")
    port, tls_port = _free_port(), _free_port()
    lines = ["state_dir = %s" % _toml(state), "", "[server]", 'host = "127.0.0.1"', "port = %d" % port]
    for app in APPS.values():
        lines += ["", "[[apps]]"] + ["%s = %s" % (k, _toml(v)) for k, v in app.items()]
    lines += ["", "[tls]", "cert = %s" % _toml(cert), "key = %s" % _toml(key),
              'host = "127.0.0.1"', "port = %d" % tls_port]
    cfg = os.path.join(tmp, "pushbox.toml")
    with open(cfg, "w") as f:
        f.write("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVERB_", "PUSHER_", "PUSHBOX_"))}
    env["PUSHBOX_STATE_DIR"] = state
    log_path = os.path.join(tmp, "pushbox.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([PUSHBOX_BIN, "serve", "--config", cfg], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    srv = TlsServer(tmp, port, tls_port, cert, key, proc, log_path)
    srv.cert_output = gen.stdout + gen.stderr
    ctx = ssl.create_default_context(cafile=cert)
    deadline = time.time() + 20
    while True:
        if proc.poll() is not None:
            srv.stop()
            raise RuntimeError("pushbox exited early (%s):\n%s" % (proc.returncode, srv.log()))
        try:
            with urllib.request.urlopen(srv.tls_base + "/up", timeout=1, context=ctx) as r:
                if r.status == 200:
                    return srv
        except Exception:
            pass
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError("pushbox TLS /up did not answer within 20 s:\n" + srv.log())
        time.sleep(0.1)
