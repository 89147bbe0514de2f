"""pusher-http-python 3.x against a live pushbox (see conftest.py for the server fixture)."""
import json
import time

import pusher
import pytest
import websocket
from pusher.errors import PusherBadAuth, PusherBadRequest, PusherForbidden

SOCKET_ID_RE = r"^\d+\.\d+$"


class WS:
    """Minimal Pusher-protocol client over websocket-client, with bounded waits."""

    def __init__(self, server, key=None):
        key = key or server.apps["main"]["key"]
        url = "ws://%s:%d/app/%s?protocol=7&client=python-test&version=1.0" % (server.host, server.port, key)
        self.ws = websocket.create_connection(url, timeout=5)
        self.frames = []
        est = self.wait(lambda f: f.get("event") == "pusher:connection_established")
        self.socket_id = json.loads(est["data"])["socket_id"]

    def send(self, event, data=None, channel=None):
        msg = {"event": event}
        if data is not None:
            msg["data"] = data
        if channel is not None:
            msg["channel"] = channel
        self.ws.send(json.dumps(msg))

    def wait(self, pred, timeout=5.0, start=0):
        for f in self.frames[start:]:
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

    def quiet(self, pred, seconds=0.5):
        """Assert that no frame matching pred arrives within `seconds`."""
        start = len(self.frames)
        try:
            f = self.wait(pred, timeout=seconds, start=start)
        except AssertionError:
            return
        raise AssertionError("unexpected frame %r" % f)

    def subscribe(self, channel, auth=None):
        data = {"channel": channel, "auth": (auth or {}).get("auth", "")}
        if auth and "channel_data" in auth:
            data["channel_data"] = auth["channel_data"]
        start = len(self.frames)
        self.send("pusher:subscribe", data)
        return self.wait(lambda f: (f.get("channel") == channel and f.get("event") in (
            "pusher_internal:subscription_succeeded", "pusher:subscription_error")) or f.get("event") == "pusher:error",
            start=start)

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


@pytest.fixture
def client(server):
    a = server.apps["main"]
    return pusher.Pusher(app_id=a["id"], key=a["key"], secret=a["secret"],
                         host=server.host, port=server.port, ssl=False, timeout=5)


@pytest.fixture
def sockets(server):
    opened = []

    def make(key=None):
        w = WS(server, key)
        opened.append(w)
        return w

    yield make
    for w in opened:
        w.close()


def test_socket_id_format(sockets):
    import re
    assert re.match(SOCKET_ID_RE, sockets().socket_id)


def test_trigger_single_channel(client, sockets):
    w = sockets()
    assert w.subscribe("py-orders")["event"] == "pusher_internal:subscription_succeeded"
    res = client.trigger("py-orders", "created", {"id": 1, "name": "Grüße"})
    assert isinstance(res, dict)
    f = w.wait(lambda f: f.get("event") == "created")
    assert f["channel"] == "py-orders"
    assert isinstance(f["data"], str)
    assert json.loads(f["data"]) == {"id": 1, "name": "Grüße"}


def test_trigger_multiple_channels(client, sockets):
    w = sockets()
    w.subscribe("py-a")
    w.subscribe("py-b")
    client.trigger(["py-a", "py-b"], "multi", "hello")
    got = set()
    for _ in range(2):
        f = w.wait(lambda f: f.get("event") == "multi" and f["channel"] not in got)
        assert f["data"] == "hello"
        got.add(f["channel"])
    assert got == {"py-a", "py-b"}


def test_trigger_socket_id_exclusion(client, sockets):
    me, other = sockets(), sockets()
    me.subscribe("py-excl")
    other.subscribe("py-excl")
    client.trigger("py-excl", "ev", {}, socket_id=me.socket_id)
    other.wait(lambda f: f.get("event") == "ev")
    me.quiet(lambda f: f.get("event") == "ev")


def test_trigger_batch(client, sockets):
    w = sockets()
    w.subscribe("py-batch-1")
    w.subscribe("py-batch-2")
    res = client.trigger_batch([
        {"channel": "py-batch-1", "name": "one", "data": {"n": 1}},
        {"channel": "py-batch-2", "name": "two", "data": {"n": 2}},
    ])
    assert isinstance(res, dict)
    assert json.loads(w.wait(lambda f: f.get("event") == "one")["data"]) == {"n": 1}
    assert json.loads(w.wait(lambda f: f.get("event") == "two")["data"]) == {"n": 2}


def test_authenticate_private_subscribes(client, sockets):
    w = sockets()
    auth = client.authenticate("private-py.1", w.socket_id)
    reply = w.subscribe("private-py.1", auth)
    assert reply["event"] == "pusher_internal:subscription_succeeded", reply
    assert reply["data"] == "{}"
    client.trigger("private-py.1", "secret", {"ok": True})
    assert json.loads(w.wait(lambda f: f.get("event") == "secret")["data"]) == {"ok": True}


def test_authenticate_presence_with_python_json_spacing(client, sockets):
    """Python's json.dumps puts spaces after ':' and ','; the server must sign the exact string."""
    w = sockets()
    auth = client.authenticate("presence-py", w.socket_id, {"user_id": "py-1", "user_info": {"name": "Py"}})
    assert ": " in auth["channel_data"]
    reply = w.subscribe("presence-py", auth)
    assert reply["event"] == "pusher_internal:subscription_succeeded", reply
    presence = json.loads(reply["data"])["presence"]
    assert presence["ids"] == ["py-1"]
    assert presence["hash"] == {"py-1": {"name": "Py"}}
    assert presence["count"] == 1


def test_authenticate_wrong_socket_is_refused(client, sockets):
    w, other = sockets(), sockets()
    auth = client.authenticate("private-py.2", other.socket_id)
    reply = w.subscribe("private-py.2", auth)
    assert reply["event"] != "pusher_internal:subscription_succeeded"


def test_authenticate_matches_spec_vector():
    p = pusher.Pusher(app_id="3", key="278d425bdf160c739803", secret="7ad3773142a6692b25b8")
    assert p.authenticate("private-foobar", "1234.1234")["auth"] == (
        "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4")


def test_authenticate_user_signin_and_send_to_user(client, sockets):
    w = sockets()
    ua = client.authenticate_user(w.socket_id, {"id": "py-user", "user_info": {"name": "Py"}})
    w.send("pusher:signin", {"auth": ua["auth"], "user_data": ua["user_data"]})
    ok = w.wait(lambda f: f.get("event") in ("pusher:signin_success", "pusher:error"))
    assert ok["event"] == "pusher:signin_success", ok
    data = json.loads(ok["data"]) if isinstance(ok["data"], str) else ok["data"]
    assert data["user_data"] == ua["user_data"]
    reply = w.subscribe("#server-to-user-py-user")
    assert reply["event"] == "pusher_internal:subscription_succeeded", reply
    client.send_to_user("py-user", "note", {"x": 1})
    f = w.wait(lambda f: f.get("event") == "note")
    assert f["channel"] == "#server-to-user-py-user"


def test_channels_info(client, sockets):
    a, b = sockets(), sockets()
    a.subscribe("py-info-public")
    a.subscribe("presence-py-info", client.authenticate("presence-py-info", a.socket_id, {"user_id": "1"}))
    b.subscribe("presence-py-info", client.authenticate("presence-py-info", b.socket_id, {"user_id": "2"}))
    everything = client.channels_info()
    assert "py-info-public" in everything["channels"]
    assert "presence-py-info" in everything["channels"]
    pres = client.channels_info(prefix_filter="presence-", attributes=["user_count"])
    assert set(pres["channels"]) == {"presence-py-info"}
    assert pres["channels"]["presence-py-info"]["user_count"] == 2


def test_channel_info(client, sockets):
    a, b = sockets(), sockets()
    for w, uid in ((a, "1"), (b, "2")):
        w.subscribe("presence-py-one", client.authenticate("presence-py-one", w.socket_id, {"user_id": uid}))
    info = client.channel_info("presence-py-one", ["user_count", "subscription_count"])
    assert info["occupied"] is True
    assert info["user_count"] == 2
    a.subscribe("py-one-public")
    assert client.channel_info("py-one-public", ["subscription_count"]) == {"occupied": True, "subscription_count": 1}
    assert client.channel_info("py-nobody") == {"occupied": False}


def test_channel_info_user_count_on_public_is_bad_request(client):
    with pytest.raises(PusherBadRequest):
        client.channel_info("py-whatever", ["user_count"])


def test_users_info(client, sockets):
    a, b, c = sockets(), sockets(), sockets()
    for w, uid in ((a, "u1"), (b, "u1"), (c, "u2")):
        w.subscribe("presence-py-users", client.authenticate("presence-py-users", w.socket_id, {"user_id": uid}))
    users = client.users_info("presence-py-users")
    assert sorted(u["id"] for u in users["users"]) == ["u1", "u2"]


def test_bad_secret_raises(server):
    a = server.apps["main"]
    bad = pusher.Pusher(app_id=a["id"], key=a["key"], secret="nope", host=server.host, port=server.port, ssl=False, timeout=5)
    with pytest.raises(PusherBadAuth):
        bad.trigger("py-x", "e", {})
    with pytest.raises(PusherBadAuth):
        bad.channels_info()


def test_disabled_app_is_forbidden(server):
    a = server.apps["disabled"]
    p = pusher.Pusher(app_id=a["id"], key=a["key"], secret=a["secret"], host=server.host, port=server.port, ssl=False, timeout=5)
    with pytest.raises(PusherForbidden):
        p.trigger("py-x", "e", {})
