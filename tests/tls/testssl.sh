#!/usr/bin/env bash
# TLS scan of pushbox's TLS listener with Debian's testssl.sh (issue 5).
#
#   tests/tls/testssl.sh                     # uses target/debug/pushbox (cargo build if missing)
#   PUSHBOX_BIN=/path/to/pushbox tests/tls/testssl.sh
#   KEEP_TMP=1 tests/tls/testssl.sh          # keep the temp dir (config, log, testssl.json, testssl.txt)
#
# Installs the `testssl.sh` package with apt-get if it is missing, starts a TLS-only pushbox on a
# free 127.0.0.1 port with a certificate from `pushbox cert self-signed`, runs testssl.sh against
# it (loopback only: protocols, cipher categories, every cipher per protocol, forward secrecy,
# server defaults, vulnerabilities), and FAILS (exit 1) if
#   * SSLv2, SSLv3, TLS 1.0 or TLS 1.1 is offered, or TLS 1.2 / TLS 1.3 is not,
#   * any offered cipher is not AEAD (GCM / CHACHA20-POLY1305 / CCM), or any of the NULL, aNULL,
#     EXPORT, LOW, 3DES/IDEA, AVERAGE (obsolete CBC) cipher categories is offered,
#   * any vulnerability check's severity is other than OK or INFO,
#   * testssl.sh reports a scan problem (WARN / FATAL), so an incomplete scan cannot pass.
# Certificate findings of a self-signed certificate (chain of trust, no OCSP/CRL, no CAA) are
# printed but do not fail the scan. Takes about a minute on loopback (see docs/TLS_SCAN.md).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
START=$(date +%s)

# --- testssl.sh ------------------------------------------------------------------------------
TESTSSL="$(command -v testssl || command -v testssl.sh || true)"
if [ -z "$TESTSSL" ]; then
  echo "== installing Debian's testssl.sh (apt-get)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends testssl.sh >/dev/null \
    || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends testssl.sh >/dev/null; }
  TESTSSL="$(command -v testssl || command -v testssl.sh)"
fi
TESTSSL_VERSION="$(dpkg-query -W -f='${Version}' testssl.sh 2>/dev/null || echo unknown)"

# --- pushbox ---------------------------------------------------------------------------------
PUSHBOX_BIN="${PUSHBOX_BIN:-$ROOT/target/debug/pushbox}"
if [ ! -x "$PUSHBOX_BIN" ]; then
  echo "== cargo build (no pushbox at $PUSHBOX_BIN)"
  (cd "$ROOT" && cargo build --bin pushbox)
fi

TMP="$(mktemp -d -t pushbox-testssl-XXXXXX)"
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  if [ -n "${KEEP_TMP:-}" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

mkdir -p "$TMP/state" "$TMP/cert"
"$PUSHBOX_BIN" cert self-signed --host localhost --ip 127.0.0.1 --out "$TMP/cert" >/dev/null
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat > "$TMP/pushbox.toml" <<TOML
state_dir = "$TMP/state"

[server]
host = "127.0.0.1"
port = $PORT
plain = false

[tls]
cert = "$TMP/cert/pushbox.crt"
key = "$TMP/cert/pushbox.key"
host = "127.0.0.1"
port = $PORT

[[apps]]
id = "1001"
key = "scan-key"
secret = "scan-secret"
TOML

# A clean environment: no REVERB_/PUSHER_/PUSHBOX_ variables may change the config.
env -u PUSHBOX_STATE_DIR $(env | sed -n 's/^\(\(REVERB\|PUSHER\|PUSHBOX\)_[A-Za-z0-9_]*\)=.*/-u \1/p') \
  RUST_LOG=info "$PUSHBOX_BIN" serve --config "$TMP/pushbox.toml" >"$TMP/pushbox.log" 2>&1 &
PID=$!
up=""
for _ in $(seq 1 200); do
  if python3 - "$PORT" "$TMP/cert/pushbox.crt" <<'PY' 2>/dev/null; then up=1; break; fi
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
with urllib.request.urlopen("https://localhost:%s/up" % sys.argv[1], timeout=1, context=ctx) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$up" ]; then
  echo "FAIL: pushbox did not serve https://localhost:$PORT/up within 20 s"; tail -20 "$TMP/pushbox.log"; exit 1
fi
echo "== pushbox $("$PUSHBOX_BIN" version 2>/dev/null | head -1) TLS-only on 127.0.0.1:$PORT; testssl.sh $TESTSSL_VERSION"

# A scan whose only trouble was connecting for some check (seen under heavy load) is repeated once.
scan_and_judge() {
# --- scan ------------------------------------------------------------------------------------
SCAN_START=$(date +%s)
set +e
timeout 600 "$TESTSSL" --quiet --warnings off --color 0 --ip one \
  --connect-timeout 5 --openssl-timeout 5 \
  --jsonfile-pretty "$TMP/testssl.json" \
  --protocols --std --each-cipher --fs --server-defaults --vulnerable \
  "127.0.0.1:$PORT" >"$TMP/testssl.txt" 2>&1
TRC=$?
set -e
SCAN_SECS=$(( $(date +%s) - SCAN_START ))
if [ ! -s "$TMP/testssl.json" ]; then
  echo "FAIL: testssl.sh wrote no JSON (exit $TRC)"; tail -30 "$TMP/testssl.txt"; exit 1
fi

# --- verdict ---------------------------------------------------------------------------------
set +e
python3 - "$TMP/testssl.json" "$SCAN_SECS" "$TRC" <<'PY'
import json, re, sys
doc = json.load(open(sys.argv[1]))
scan_secs, trc = sys.argv[2], sys.argv[3]
res = doc["scanResult"][0]
fails, notes = [], []
def sect(name):
    return res.get(name) or []

print("testssl.sh %s (%s), target %s:%s, scan %s s, exit %s" % (
    doc.get("version", "?"), doc.get("openssl", "?"), res.get("ip"), res.get("port"), scan_secs, trc))

# Scan problems anywhere mean an incomplete scan.
for name, items in res.items():
    if isinstance(items, list):
        for f in items:
            if isinstance(f, dict) and f.get("severity") in ("WARN", "FATAL"):
                fails.append("scan problem [%s] %s: %s" % (name, f.get("id"), f.get("finding")))

# Protocols.
protos = {f["id"]: f["finding"] for f in sect("protocols")}
for p in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
    v = protos.get(p)
    if v is None or not v.startswith("not offered"):
        fails.append("protocol %s: %s" % (p, v))
for p in ("TLS1_2", "TLS1_3"):
    v = protos.get(p)
    if v is None or not v.startswith("offered"):
        fails.append("protocol %s expected offered: %s" % (p, v))
print("protocols: " + ", ".join("%s=%s" % (k, v) for k, v in protos.items()
                                if k in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "ALPN", "NPN")))

# Cipher categories.
cats = {f["id"]: f["finding"] for f in sect("ciphers")}
for c in ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
          "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"):
    v = cats.get(c)
    if v is None or not v.startswith("not offered"):
        fails.append("cipher category %s: %s" % (c, v))
print("cipher categories: " + ", ".join("%s=%s" % (k.replace("cipherlist_", ""), v) for k, v in cats.items()))

# Every cipher offered (the per-cipher list of --each-cipher).
offered = []
for f in sect("cipherTests"):
    if not f["id"].startswith("cipher"):
        continue
    cols = f["finding"].split()
    # "TLS 1.2   xc02c   ECDHE-ECDSA-AES256-GCM-SHA384  ECDH 253  AESGCM  256  TLS_ECDHE_..."
    text = f["finding"]
    offered.append(text)
    if not re.search(r"GCM|CHACHA20|CCM", text, re.I) or re.search(r"CBC|RC4|3DES|DES-|NULL|EXP|IDEA|SEED|CAMELLIA", text.upper().replace("TLS_AES", "")):
        fails.append("non-AEAD cipher offered: %s" % text)
if not offered:
    fails.append("no offered cipher listed (cipherTests empty)")
print("ciphers offered (%d):" % len(offered))
for o in offered:
    print("  " + re.sub(r"\s+", " ", o))

fs = {f["id"]: f["finding"] for f in sect("fs")}
if fs:
    print("forward secrecy: %s; curves: %s" % (fs.get("FS", fs.get("PFS")), fs.get("FS_ECDHE_curves", fs.get("PFS_ECDHE_curves"))))

# Vulnerabilities.
vulns = sect("vulnerabilities")
if not vulns:
    fails.append("no vulnerability results")
print("vulnerabilities (%d checks):" % len(vulns))
for f in vulns:
    ok = f.get("severity") in ("OK", "INFO")
    print("  %-4s %-22s %-5s %s" % ("ok" if ok else "FAIL", f["id"], f.get("severity"), f["finding"]))
    if not ok:
        fails.append("vulnerability %s: %s %s" % (f["id"], f.get("severity"), f["finding"]))

# Certificate / server defaults: shown, not failing (a self-signed certificate is expected).
for f in sect("serverDefaults"):
    if f.get("severity") not in ("OK", "INFO"):
        notes.append("%s %s: %s" % (f.get("severity"), f["id"], f["finding"]))
if notes:
    print("server defaults / certificate findings (not failing; self-signed test certificate):")
    for n in notes:
        print("  " + n)

if fails:
    print("\nFAIL (%d):" % len(fails))
    for x in fails:
        print("  " + x)
    # Only "the scanner could not connect for one check" (seen under heavy load): exit 3, so the
    # caller scans once more instead of passing an incomplete scan.
    sys.exit(3 if all(x.startswith("scan problem") for x in fails) else 1)
print("\nPASS: TLS 1.2 + 1.3 only, AEAD suites only, every vulnerability check OK/INFO")
PY
}
for attempt in 1 2; do
  set +e
  scan_and_judge
  RC=$?
  set -e
  if [ "$RC" -eq 3 ] && [ "$attempt" -eq 1 ]; then echo "== scan incomplete (connection trouble): scanning again"; continue; fi
  break
done
[ "$RC" -eq 3 ] && RC=1
echo "total $(( $(date +%s) - START )) s"
exit $RC
