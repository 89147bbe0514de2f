#!/usr/bin/env bash
# Test of the amd64 Debian package on this machine: build it (scripts/build-deb.sh), lintian
# (no errors, no warnings), `dpkg -i`, the installed files, user, modes and conffile, the keys
# and certificate made at install (and not in the package), `pushbox check` and `pushbox serve`
# run as the pushbox user against the installed config and state directory (/up on the plain
# port, an event published over TLS trusting only the generated certificate, found again in the
# event log), `dpkg -r` (config, keys and state stay; a reinstall serves the same app), then
# `dpkg --purge`: nothing of the package is left but the pushbox user, which Debian policy keeps
# (the test deletes it afterwards if the test created it).
#
#   scripts/test-deb.sh
#
# Needs root (it installs and purges a package); without root it prints SKIP and exits 0.
# Refuses to run when a pushbox package is already installed here. Under systemd as PID 1 the
# package starts pushbox.service itself; the test checks it is active, then stops it and serves
# by hand as without systemd (this machine's PID 1 decides which; both end the same way).
#
# Environment: DEB (test this .deb, skip the build), CARGO_TARGET_DIR and SKIP_BUILD (passed to
# scripts/build-deb.sh), KEEP=1 (keep the temp dir).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
T0=$SECONDS
say() { printf '==> [%4ss] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { printf 'test-deb: FAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf 'test-deb: ok: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "test-deb: SKIP: needs root (dpkg -i / dpkg --purge of the package on this machine); run it with sudo"
    exit 0
fi
status=$(dpkg-query -W -f='${Status}' pushbox 2>/dev/null || true)
case "$status" in
    ""|*not-installed*) ;;
    *) die "a pushbox package is already on this machine ($status); the test would replace and purge it: remove it first (dpkg --purge pushbox)" ;;
esac
if ! command -v lintian >/dev/null; then
    say "apt-get install lintian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lintian >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lintian >/dev/null; } ||
        die "cannot install lintian"
fi

TMP=$(mktemp -d /tmp/pushbox-test-deb.XXXXXX)
PID=
INSTALLED=0
had_user=0
getent passwd pushbox >/dev/null && had_user=1
cleanup() {
    local rc=$?
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        sleep 2
        kill -KILL "$PID" 2>/dev/null || true
    fi
    if [ "$INSTALLED" = 1 ]; then
        echo "test-deb: purging the package after a failure" >&2
        dpkg --purge pushbox >/dev/null 2>&1 || true
    fi
    if [ "$had_user" = 0 ] && getent passwd pushbox >/dev/null; then
        userdel pushbox || echo "test-deb: could not delete the pushbox user the test created (userdel pushbox)" >&2
        if getent group pushbox >/dev/null; then groupdel pushbox || true; fi
    fi
    if [ "$rc" -ne 0 ] && [ -f "$TMP/server.log" ]; then
        echo "---- server log (last 30 lines) ----" >&2; tail -n 30 "$TMP/server.log" >&2
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT INT TERM

# Everything named *pushbox* in the system directories before, to compare after the purge.
snapshot() {
    find /etc /usr /var/lib /var/cache /var/log /run -xdev -name '*pushbox*' 2>/dev/null | LC_ALL=C sort
}
snapshot >"$TMP/before"

# --- 1. build + lintian --------------------------------------------------------------------
if [ -n "${DEB:-}" ]; then
    [ -f "$DEB" ] || die "DEB=$DEB does not exist"
else
    say "scripts/build-deb.sh x86_64-unknown-linux-musl"
    scripts/build-deb.sh x86_64-unknown-linux-musl >"$TMP/build.out" || die "scripts/build-deb.sh failed"
    DEB=$(tail -n1 "$TMP/build.out")
fi
[ "$(dpkg-deb -f "$DEB" Architecture)" = amd64 ] || die "$DEB is not an amd64 package"
VERSION=$(dpkg-deb -f "$DEB" Version)
case "$(basename "$DEB")" in "pushbox_${VERSION}_amd64.deb") ;; *) die "$DEB is not named pushbox_${VERSION}_amd64.deb" ;; esac
say "lintian $(basename "$DEB")"
lintian --pedantic -I --show-overrides "$DEB" 2>&1 | grep -v 'running with root privileges' | tee "$TMP/lintian.txt" >&2 || true
if grep -qE '^[EW]: ' "$TMP/lintian.txt"; then
    die "lintian reports errors or warnings (above); fix them or override them with a reason in packaging/deb/lintian-overrides"
fi
ok "lintian: no errors, no warnings ($(grep -c '^I: ' "$TMP/lintian.txt" || true) info, $(grep -c '^O: ' "$TMP/lintian.txt" || true) overridden)"

# The exact file list, and nothing secret in the package.
dpkg-deb -c "$DEB" | awk '$1 !~ /^d/ { sub(/^\.\//, "/", $6); print $6 }' | LC_ALL=C sort >"$TMP/files"
cat >"$TMP/files.expected" <<'EOF'
/etc/pushbox/pushbox.toml
/usr/bin/pushbox
/usr/lib/pushbox/firstboot
/usr/lib/systemd/system/pushbox-firstboot.service
/usr/lib/systemd/system/pushbox.service
/usr/lib/systemd/system/pushbox.service.d/10-firstboot.conf
/usr/lib/systemd/system/pushbox.socket
/usr/lib/sysusers.d/pushbox.conf
/usr/lib/tmpfiles.d/pushbox.conf
/usr/share/doc/pushbox/README.Debian
/usr/share/doc/pushbox/changelog.Debian.gz
/usr/share/doc/pushbox/copyright
/usr/share/lintian/overrides/pushbox
/usr/share/man/man1/pushbox.1.gz
EOF
diff -u "$TMP/files.expected" "$TMP/files" >&2 || die "the package's file list is not the expected one (diff above)"
[ "$(dpkg-deb -I "$DEB" conffiles)" = /etc/pushbox/pushbox.toml ] || die "conffiles is not exactly /etc/pushbox/pushbox.toml"
mkdir "$TMP/data"
dpkg-deb -x "$DEB" "$TMP/data"
if grep -rqE 'PRIVATE KEY|BEGIN CERTIFICATE|^\[\[apps\]\]|^[[:space:]]*secret[[:space:]]*=' "$TMP/data/etc"; then
    die "the package ships a key, a certificate or an app in /etc"
fi
file -b "$TMP/data/usr/bin/pushbox" | grep -qE 'static(-pie)? linked' || die "/usr/bin/pushbox in the package is not statically linked"
ok "$(basename "$DEB"): $(wc -l <"$TMP/files") files as expected, conffile /etc/pushbox/pushbox.toml, no key, certificate or app inside, static binary"

# --- 2. dpkg -i ------------------------------------------------------------------------------
say "dpkg -i $(basename "$DEB")"
INSTALLED=1
dpkg -i "$DEB" </dev/null >"$TMP/install.log" 2>&1 || { cat "$TMP/install.log" >&2; die "dpkg -i failed"; }
cat "$TMP/install.log" >&2
[ "$(dpkg-query -W -f='${Status}' pushbox)" = "install ok installed" ] || die "pushbox is not 'install ok installed'"
[ "$(/usr/bin/pushbox version)" = "pushbox ${VERSION%-*}" ] || die "pushbox version says $(/usr/bin/pushbox version), expected pushbox ${VERSION%-*}"
while read -r f; do [ -f "$f" ] || die "$f is not installed"; done <"$TMP/files.expected"
dpkg-query -W -f='${Conffiles}\n' pushbox | grep -q '^ /etc/pushbox/pushbox.toml [0-9a-f]\{32\}$' ||
    die "dpkg does not list /etc/pushbox/pushbox.toml as a conffile"
dpkg --verify pushbox >"$TMP/verify" 2>&1 || true
# The first start appends the app to the conffile (documented in README.Debian); nothing else may differ.
if grep -v ' c /etc/pushbox/pushbox.toml$' "$TMP/verify" | grep -q .; then
    cat "$TMP/verify" >&2; die "dpkg --verify: installed files differ from the package"
fi

# The user and the modes that tmpfiles and the first start set.
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd pushbox) || die "no pushbox user after install"
[ "$home" = /var/lib/pushbox ] || die "pushbox's home is $home, not /var/lib/pushbox"
case "$shell" in */nologin|/bin/false) ;; *) die "pushbox's shell is $shell, expected nologin" ;; esac
[ "$uid" -lt 1000 ] || die "pushbox is not a system user (uid $uid)"
getent group pushbox >/dev/null || die "no pushbox group"
mode() { stat -c '%a %U:%G' "$1"; }
expect_mode() { [ "$(mode "$1")" = "$2" ] || die "$1 is $(mode "$1"), expected $2"; }
expect_mode /etc/pushbox "755 root:pushbox"
expect_mode /etc/pushbox/pushbox.toml "640 root:pushbox"
expect_mode /etc/pushbox/pushbox.key "640 root:pushbox"
expect_mode /etc/pushbox/pushbox.crt "644 root:root"
expect_mode /var/lib/pushbox "750 pushbox:pushbox"
[ "$(grep -c '^\[\[apps\]\]' /etc/pushbox/pushbox.toml)" = 1 ] || die "the first start did not add exactly one [[apps]] to /etc/pushbox/pushbox.toml"
APP_ID=$(sed -n '/^\[\[apps\]\]/,$ s/^id *= *"\(.*\)"/\1/p' /etc/pushbox/pushbox.toml | sed -n 1p)
SECRET=$(sed -n '/^\[\[apps\]\]/,$ s/^secret *= *"\(.*\)"/\1/p' /etc/pushbox/pushbox.toml | sed -n 1p)
[ -n "$APP_ID" ] && [ ${#SECRET} -ge 32 ] || die "the generated app has no id or a short secret"
grep -qF "$SECRET" "$TMP/install.log" && die "the app's secret was printed during dpkg -i (it would land in apt's term.log)"
grep -q 'BEGIN CERTIFICATE' /etc/pushbox/pushbox.crt || die "/etc/pushbox/pushbox.crt is not a PEM certificate"
CRT_SUM=$(sha256sum </etc/pushbox/pushbox.crt)
for u in multi-user.target.wants/pushbox.service sockets.target.wants/pushbox.socket multi-user.target.wants/pushbox-firstboot.service; do
    [ -L "/etc/systemd/system/$u" ] || die "/etc/systemd/system/$u is not enabled"
done
# The units as installed (with the first-boot drop-in): systemd-analyze verify exits 0 on
# unknown keys, so any output fails (as in scripts/check-systemd.sh).
if command -v systemd-analyze >/dev/null; then
    out=$(systemd-analyze verify --man=no pushbox.socket pushbox.service pushbox-firstboot.service 2>&1) ||
        die "systemd-analyze verify of the installed units failed: $out"
    [ -z "$out" ] || die "systemd-analyze verify of the installed units printed: $out"
fi
ok "installed: files, conffile, user pushbox (uid $uid, $shell), modes, app $APP_ID and a certificate made at install and not printed, units enabled and verified"

if [ -d /run/systemd/system ]; then
    # systemd is PID 1: the package started the service; check it, then serve by hand below.
    for _ in $(seq 30); do systemctl is-active --quiet pushbox.service && break; sleep 1; done
    systemctl is-active --quiet pushbox.socket pushbox.service || { systemctl status pushbox.socket pushbox.service >&2 || true; die "pushbox.socket/pushbox.service are not active after dpkg -i"; }
    ok "systemd: pushbox.socket and pushbox.service active"
    systemctl stop pushbox.service pushbox.socket
else
    say "no systemd as PID 1 here ($(ps -o comm= 1)): serving by hand as the pushbox user"
fi

# --- 3. pushbox check + serve as the pushbox user ---------------------------------------------
# Free loopback ports: this machine may run other servers on 8080/8443. The admin's way to move
# them is editing the conffile, which is what this does (purge must still remove it).
read -r PLAIN TLS < <(python3 -c '
import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
sed -i -e "s/^port = 8080\$/port = $PLAIN/" -e "s/^port = 8443\$/port = $TLS/" -e 's/^host = "0.0.0.0"$/host = "127.0.0.1"/' /etc/pushbox/pushbox.toml
grep -q "^port = $TLS\$" /etc/pushbox/pushbox.toml || die "cannot move the ports in /etc/pushbox/pushbox.toml"
as_pushbox() { setpriv --reuid=pushbox --regid=pushbox --init-groups -- "$@"; }
clean_env=(env -u LISTEN_FDS -u LISTEN_PID -u LISTEN_FDNAMES -u NOTIFY_SOCKET -u WATCHDOG_USEC -u PUSHBOX_STATE_DIR
           -u REVERB_APP_ID -u REVERB_APP_KEY -u REVERB_APP_SECRET -u PUSHER_APP_ID -u PUSHER_APP_KEY -u PUSHER_APP_SECRET
           -u REVERB_SERVER_HOST -u REVERB_SERVER_PORT -u PUSHBOX_TLS_CERT -u PUSHBOX_TLS_KEY)

say "pushbox check (as pushbox, server stopped)"
as_pushbox "${clean_env[@]}" /usr/bin/pushbox check --config /etc/pushbox/pushbox.toml >"$TMP/check1.txt" 2>&1 ||
    { cat "$TMP/check1.txt" >&2; die "pushbox check failed on the installed configuration"; }
cat "$TMP/check1.txt" >&2

say "pushbox serve (as pushbox) on 127.0.0.1:$PLAIN, TLS 127.0.0.1:$TLS, state /var/lib/pushbox"
# setpriv and env exec, so $! is the server itself (a shell function here would be a subshell).
setpriv --reuid=pushbox --regid=pushbox --init-groups -- "${clean_env[@]}" PUSHBOX_LOG=info /usr/bin/pushbox serve --config /etc/pushbox/pushbox.toml >"$TMP/server.log" 2>&1 </dev/null &
PID=$!
up=
for _ in $(seq 100); do   # 10 s
    kill -0 "$PID" 2>/dev/null || { wait "$PID" && st=0 || st=$?; PID=; die "pushbox serve exited with status $st"; }
    up=$( (exec 3<>"/dev/tcp/127.0.0.1/$PLAIN" && printf 'GET /up HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 && timeout 5 cat <&3) 2>/dev/null | head -n1 || true)
    case "$up" in HTTP/1.1\ 200*) break ;; esac
    sleep 0.1
done
case "$up" in HTTP/1.1\ 200*) ;; *) die "GET /up on 127.0.0.1:$PLAIN did not answer 200 within 10 s (got: ${up:-nothing})" ;; esac
[ "$(ps -o uid= -p "$PID" | tr -d ' ')" = "$uid" ] && [ "$(ps -o comm= -p "$PID")" = pushbox ] ||
    die "process $PID is not pushbox running as the pushbox user: $(ps -o user=,comm= -p "$PID")"
ok "pushbox serve runs as pushbox, GET /up -> ${up%$'\r'}"

say "pushbox check (server running: probes it as a client)"
as_pushbox "${clean_env[@]}" /usr/bin/pushbox check --config /etc/pushbox/pushbox.toml >"$TMP/check2.txt" 2>&1 ||
    { cat "$TMP/check2.txt" >&2; die "pushbox check failed against the running server"; }
cat "$TMP/check2.txt" >&2
grep -q 'held by a running pushbox' "$TMP/check2.txt" || die "pushbox check did not recognise the running server"

say "pushbox trigger over TLS, trusting only /etc/pushbox/pushbox.crt"
"${clean_env[@]}" /usr/bin/pushbox trigger --config /etc/pushbox/pushbox.toml --channel deb-test --event DebInstalled \
    --data '{"from":"test-deb"}' --url "https://127.0.0.1:$TLS" --ca /etc/pushbox/pushbox.crt >&2 ||
    die "pushbox trigger over https://127.0.0.1:$TLS with the generated certificate failed"
as_pushbox "${clean_env[@]}" /usr/bin/pushbox events tail --config /etc/pushbox/pushbox.toml -n 5 >"$TMP/events.txt" 2>&1 ||
    { cat "$TMP/events.txt" >&2; die "pushbox events tail failed"; }
grep -q DebInstalled "$TMP/events.txt" || { cat "$TMP/events.txt" >&2; die "the event is not in the event log"; }
ok "event published over TLS (certificate verified) and found in the event log in /var/lib/pushbox"

kill -TERM "$PID"
st=
for _ in $(seq 100); do
    kill -0 "$PID" 2>/dev/null || { wait "$PID" && st=0 || st=$?; break; }
    sleep 0.1
done
[ -n "$st" ] || die "pushbox serve still running 10 s after SIGTERM"
PID=
[ "$st" = 0 ] || die "pushbox serve exited with status $st after SIGTERM"
ok "pushbox serve stopped cleanly on SIGTERM"
[ -n "$(ls -A /var/lib/pushbox)" ] || die "/var/lib/pushbox is empty after serving"

# --- 4. dpkg -r keeps config, keys and state; a reinstall serves the same app ------------------
say "dpkg -r pushbox"
dpkg -r pushbox </dev/null >"$TMP/remove.log" 2>&1 || { cat "$TMP/remove.log" >&2; die "dpkg -r failed"; }
[ "$(dpkg-query -W -f='${Status}' pushbox)" = "deinstall ok config-files" ] || die "after dpkg -r the package is not 'deinstall ok config-files'"
[ ! -e /usr/bin/pushbox ] && [ ! -e /usr/lib/systemd/system/pushbox.service ] || die "dpkg -r left the binary or the units"
for f in /etc/pushbox/pushbox.toml /etc/pushbox/pushbox.key /etc/pushbox/pushbox.crt; do [ -s "$f" ] || die "dpkg -r removed $f"; done
[ -n "$(ls -A /var/lib/pushbox)" ] || die "dpkg -r removed the state in /var/lib/pushbox"
say "dpkg -i again"
dpkg -i "$DEB" </dev/null >"$TMP/install2.log" 2>&1 || { cat "$TMP/install2.log" >&2; die "reinstall failed"; }
[ "$(sha256sum </etc/pushbox/pushbox.crt)" = "$CRT_SUM" ] || die "the reinstall made a new certificate"
grep -qF "id = \"$APP_ID\"" /etc/pushbox/pushbox.toml && [ "$(grep -c '^\[\[apps\]\]' /etc/pushbox/pushbox.toml)" = 1 ] ||
    die "the reinstall changed the app"
grep -q "^port = $TLS\$" /etc/pushbox/pushbox.toml || die "the reinstall replaced the edited conffile"
ok "dpkg -r kept config, keys and state; the reinstall kept the app, the certificate and the edited conffile"

# --- 5. dpkg --purge leaves nothing but the user -----------------------------------------------
say "dpkg --purge pushbox"
dpkg --purge pushbox </dev/null >"$TMP/purge.log" 2>&1 || { cat "$TMP/purge.log" >&2; die "dpkg --purge failed"; }
INSTALLED=0
cat "$TMP/purge.log" >&2
[ -z "$(dpkg-query -W -f='${Status}' pushbox 2>/dev/null | grep -v not-installed)" ] || die "dpkg still knows pushbox after the purge"
snapshot >"$TMP/after"
diff -u "$TMP/before" "$TMP/after" >&2 || die "the purge left files behind (diff of *pushbox* paths above)"
for d in /etc/pushbox /var/lib/pushbox /usr/lib/pushbox; do [ ! -e "$d" ] || die "$d is still there after the purge"; done
ls /var/lib/dpkg/info/pushbox.* >/dev/null 2>&1 && die "dpkg's info files of pushbox are still there"
getent passwd pushbox >/dev/null || die "the purge deleted the pushbox user (Debian policy: keep it)"
ok "purge: no /etc/pushbox, /var/lib/pushbox, units, unit symlinks or helper state left; the pushbox user stays (policy)$([ "$had_user" = 0 ] && echo '; the test deletes it now')"

echo "test-deb: PASS ($(basename "$DEB"): lintian, install, check, serve, TLS publish, remove, reinstall, purge) in $((SECONDS - T0)) s"
