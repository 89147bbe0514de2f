"""Starts a private pushbox process for the Python SDK tests (same app layout as lib/server.mjs)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
PUSHBOX_BIN = os.environ.get("PUSHBOX_BIN", os.path.join(REPO_ROOT, "target", "debug", "pushbox"))

APPS = {
    "main": {"id": "1001", "key": "main-key", "secret": "main-secret"},
    "counted": {"id": "1002", "key": "counted-key", "secret": "counted-secret",
                "subscription_count": True, "max_presence_members": 2},
    "disabled": {"id": "1003", "key": "disabled-key", "secret": "disabled-secret", "enabled": False},
}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


class Server:
    def __init__(self, port, apps, tmp, proc, log_path):
        self.host = "127.0.0.1"
        self.port = port
        self.apps = apps
        self.tmp = tmp
        self.proc = proc
        self.log_path = log_path
        self.base = "http://127.0.0.1:%d" % port

    def log(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def server():
    if not os.path.exists(PUSHBOX_BIN):
        pytest.fail("pushbox binary not found at %s; run cargo build" % PUSHBOX_BIN)
    tmp = tempfile.mkdtemp(prefix="pushbox-py-")
    state = os.path.join(tmp, "state")
    os.mkdir(state)
    port = _free_port()
    lines = ["state_dir = %s" % _toml(state), "", "[server]",
             'host = "127.0.0.1"', "port = %d" % port]
    for app in APPS.values():
        lines += ["", "[[apps]]"] + ["%s = %s" % (k, _toml(v)) for k, v in app.items()]
    cfg = os.path.join(tmp, "pushbox.toml")
    with open(cfg, "w") as f:
        f.write("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVERB_", "PUSHER_", "PUSHBOX_"))}
    env["PUSHBOX_STATE_DIR"] = state
    log_path = os.path.join(tmp, "pushbox.log")
    log = open(log_path, "ab")
    proc = subprocess.Popen([PUSHBOX_BIN, "serve", "--config", cfg], env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    srv = Server(port, APPS, tmp, proc, log_path)
    deadline = time.time() + 20
    while True:
        if proc.poll() is not None:
            pytest.fail("pushbox exited early (%s):\n%s" % (proc.returncode, srv.log()))
        try:
            with urllib.request.urlopen(srv.base + "/up", timeout=1) as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail("pushbox did not answer GET /up within 20 s:\n" + srv.log())
        time.sleep(0.1)
    yield srv
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=3)
    log.close()
    if not os.environ.get("KEEP_PUSHBOX_TMP"):
        shutil.rmtree(tmp, ignore_errors=True)
