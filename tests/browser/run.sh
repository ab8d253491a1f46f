#!/usr/bin/env bash
# The browser guard (src/guard.rs) against a real headless Chromium and the real binary: a page on
# another origin cannot use keyproxy's key (simple, preflighted and no-cors requests all stop at
# keyproxy), a DNS-rebinding navigation gets 421, and a page on an allowed origin can.
#
#   tests/browser/run.sh [path/to/keyproxy]     (default target/debug/keyproxy)
#
# Needs python3 and chromium (Debian: apt-get install chromium); installs nothing. Everything
# listens on 127.0.0.1; Chromium resolves evil.test and allowed.test to 127.0.0.1 itself.
set -euo pipefail

bin=${1:-target/debug/keyproxy}
case $bin in /*) ;; *) bin="$PWD/$bin" ;; esac
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."

[ -x "$bin" ] || { echo "tests/browser: no keyproxy binary at $bin (cargo build --bin keyproxy)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "tests/browser: python3 is missing" >&2; exit 2; }
if ! command -v chromium >/dev/null; then
  echo "tests/browser: chromium is not installed (Debian: apt-get install -y chromium)" >&2
  exit 2
fi
# (Debian's /usr/bin/chromium wrapper may print "[: ...: unexpected operator" when /dev/shm is
# mounted twice; that is its own shm check and harmless, so stderr is dropped here.)
if ! version=$(chromium --version 2>/dev/null) || [ -z "$version" ]; then
  echo "tests/browser: chromium is installed but 'chromium --version' fails" >&2
  exit 2
fi
echo "== $version"

work=$(mktemp -d)
# The state store of this run only, not the one in $HOME a developer's own keyproxy uses.
export KEYPROXY_STATE_DIR="$work/state"
pids=()
cleanup() {
  for pid in ${pids[@]+"${pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
  for pid in ${pids[@]+"${pids[@]}"}; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free ports on 127.0.0.1, none of them one Chromium refuses to fetch from (its restricted list).
read -r page_port proxy_port admin_port < <(python3 - <<'PY'
import socket
restricted = {6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080}
socks = []
while len(socks) < 3:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    if s.getsockname()[1] in restricted:
        continue
    socks.append(s)
print(*(s.getsockname()[1] for s in socks))
PY
)

# probe tcp PORT | probe http URL STATUS: true once it answers (one attempt, short timeout).
probe() {
  python3 - "$@" <<'PY'
import socket, sys, urllib.error, urllib.request
try:
    if sys.argv[1] == "tcp":
        socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=1).close()
    else:
        try:
            status = urllib.request.urlopen(sys.argv[2], timeout=2).status
        except urllib.error.HTTPError as e:
            status = e.code
        sys.exit(0 if status == int(sys.argv[3]) else 1)
except OSError:
    sys.exit(1)
PY
}
# wait_for NAME PID LOG PROBE-ARGS...: poll until ready, with a deadline; fail if it died.
wait_for() {
  local name=$1 pid=$2 log=$3 deadline=$((SECONDS + 30))
  shift 3
  until probe "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "tests/browser: $name exited before it was ready; its log:" >&2
      cat "$log" >&2
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "tests/browser: $name not ready after 30 s" >&2
      exit 1
    fi
    sleep 0.1
  done
}

# A realistic fake key: only its SHA-256 (as "Bearer <key>") goes to the provider's environment.
python3 -c 'import secrets, string; print("sk-proj-" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(156)))' > "$work/key"
chmod 600 "$work/key"
expect_auth=$(python3 -c 'import hashlib, sys; print(hashlib.sha256(("Bearer " + open(sys.argv[1]).read().strip()).encode()).hexdigest())' "$work/key")

# (1) the stand-in provider
EXPECT_AUTH_SHA256=$expect_auth python3 "$here/provider.py" "$work/provider.port" "$work/counts.json" 2> "$work/provider.log" &
pids+=($!)
provider_pid=$!
deadline=$((SECONDS + 30))
until [ -s "$work/provider.port" ]; do
  kill -0 "$provider_pid" 2>/dev/null || { echo "tests/browser: provider died:" >&2; cat "$work/provider.log" >&2; exit 1; }
  ((SECONDS < deadline)) || { echo "tests/browser: provider not ready after 30 s" >&2; exit 1; }
  sleep 0.1
done
provider_port=$(cat "$work/provider.port")
wait_for provider "$provider_pid" "$work/provider.log" tcp "$provider_port"

# (2) the page server
python3 -m http.server --bind 127.0.0.1 --directory "$here" "$page_port" > "$work/page.log" 2>&1 &
pids+=($!)
wait_for "page server" "$!" "$work/page.log" http "http://127.0.0.1:$page_port/page.html" 200

# (3) keyproxy
cat > "$work/keyproxy.toml" <<TOML
[server]
listen = "127.0.0.1:$proxy_port"
admin_listen = "127.0.0.1:$admin_port"
allowed_origins = ["http://allowed.test:$page_port"]

[[upstreams]]
name = "openai"
provider = "openai"
base_url = "http://127.0.0.1:$provider_port"
key = { file = "$work/key" }
TOML
"$bin" --log-format json run --config "$work/keyproxy.toml" > "$work/keyproxy.log" 2>&1 &
pids+=($!)
kp_pid=$!
wait_for keyproxy "$kp_pid" "$work/keyproxy.log" http "http://127.0.0.1:$admin_port/readyz" 200
wait_for keyproxy "$kp_pid" "$work/keyproxy.log" tcp "$proxy_port"

proxy="http://127.0.0.1:$proxy_port"
passed=0
failed=0

# browse NAME URL: Chromium loads URL; the DOM goes to NAME.html, Chromium's stderr to NAME.err.
# Even with --disable-background-networking, Chromium 156 still asks DNS for clients2.google.com
# (network time), update.googleapis.com (an updater) and accounts.google.com (Gaia), and those
# queries leave the machine. "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" fails every other name inside
# the browser, so nothing but 127.0.0.1 is ever contacted (checked with --log-net-log: the only
# TCP connections are to the three local ports, and no DNS query is sent).
browse() {
  local profile
  profile=$(mktemp -d "$work/profile.XXXXXX")
  timeout -k 5 15 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" \
    --host-resolver-rules="MAP evil.test 127.0.0.1, MAP allowed.test 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
    --virtual-time-budget=10000 --dump-dom "$2" > "$work/$1.html" 2> "$work/$1.err" || {
    echo "chromium exited with $? on $2" >> "$work/$1.err"
  }
}

# judge NAME KIND: assert on NAME.html and on what the provider saw since NAME.before.json.
judge() {
  local name=$1 kind=$2 why verdict
  if why=$(python3 - "$work" "$name" "$kind" "http://allowed.test:$page_port" <<'PY'
import html, json, re, sys
work, name, kind, allowed = sys.argv[1:]
dom = open(f"{work}/{name}.html").read()
before = json.load(open(f"{work}/{name}.before.json"))
after = json.load(open(f"{work}/counts.json"))
seen = {k: v - before["requests"].get(k, 0) for k, v in after["requests"].items()}
seen = {k: v for k, v in seen.items() if v}
injected = after["key_injected"] - before["key_injected"]
missing = after["key_missing"] - before["key_missing"]

def fail(msg):
    print(msg)
    sys.exit(1)

def result():
    m = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    if not m:
        fail(f"no #result in the DOM: {dom[:300]!r}")
    text = html.unescape(m.group(1))
    if text == "pending":
        fail("the page never finished its fetch")
    return json.loads(text)

if kind in ("refused", "opaque"):
    r = result()
    print(json.dumps(r))
    if kind == "refused" and (r["fetched"] or r["error"]["name"] != "TypeError"):
        fail(f"the page read keyproxy's answer (type {r.get('type')}, status {r.get('status')})")
    if kind == "opaque" and not (r["fetched"] and r["type"] == "opaque" and r["status"] == 0):
        fail(f"a no-cors fetch should be opaque (status 0): {r}")
    if seen:
        fail(f"the provider saw {seen}: keyproxy forwarded a web page's request")
elif kind == "rebinding":
    m = re.search(r"<pre[^>]*>(.*?)</pre>", dom, re.S)
    if not m:
        fail(f"no JSON body in the DOM: {dom[:300]!r}")
    body = json.loads(html.unescape(m.group(1)))
    print(json.dumps(body))
    if body.get("error", {}).get("code") != "host_not_allowed":
        fail(f"expected keyproxy's host_not_allowed refusal, got {body}")
    if seen:
        fail(f"the provider saw {seen}")
elif kind == "allowed":
    r = result()
    print(json.dumps(r))
    if not r["fetched"]:
        fail(f"the allowed page could not fetch: {r}")
    if (r["type"], r["status"], r["body"]) != ("cors", 200, '{"ok":true}'):
        fail(f"expected a readable 200 {{\"ok\":true}}: {r}")
    if not r.get("requestId"):
        fail(f"x-keyproxy-request-id is not readable by the page: {r}")
    if r["headers"].get("access-control-allow-origin") not in (None, allowed):
        fail(f"Access-Control-Allow-Origin should be {allowed} (the provider's * stripped): {r}")
    if seen != {"POST /v1/chat/completions": 1}:
        fail(f"the provider should have seen exactly one POST (no preflight): {seen}")
    if (injected, missing) != (1, 0):
        fail(f"the provider's request did not carry the real key (injected={injected}, other={missing})")
PY
  ); then
    echo "ok $name"
    passed=$((passed + 1))
    verdict=ok
  else
    echo "FAIL $name"
    failed=$((failed + 1))
    verdict=fail
  fi
  [ -z "$why" ] || printf '%s\n' "$why" | sed 's/^/   /'
  if [ "$verdict" = fail ] || [ "${VERBOSE:-}" = 1 ]; then
    grep -iE 'console|cors|fetch|blocked|error' "$work/$name.err" 2>/dev/null | grep -v dbus | sed 's/^/   chromium: /' | head -20 || true
  fi
}

scenario() { # NAME KIND URL
  cp "$work/counts.json" "$work/$1.before.json"
  browse "$1" "$3"
  judge "$1" "$2"
}

evil="http://evil.test:$page_port/page.html?proxy=$proxy"
scenario cross_origin_simple_post refused "$evil&case=simple"
scenario cross_origin_preflighted_post refused "$evil&case=preflight"
scenario cross_origin_no_cors_post opaque "$evil&case=nocors"
scenario dns_rebinding_host rebinding "http://evil.test:$proxy_port/v1/models"
scenario allowed_origin_reads_answer allowed "http://allowed.test:$page_port/page.html?proxy=$proxy&case=allowed"

# tally NAME EXIT-STATUS WHY: count a check that is not a browsing scenario.
tally() {
  if [ "$2" -eq 0 ]; then
    echo "ok $1"
    passed=$((passed + 1))
  else
    echo "FAIL $1"
    failed=$((failed + 1))
  fi
  echo "   $3"
}

# 6: the refusals are counted where operators look.
why=$(python3 - "http://127.0.0.1:$admin_port/metrics" <<'PY'
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
values = {}
for m in re.finditer(r"^keyproxy_refusals_total\{([^}]*)\} (\S+)$", text, re.M):
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    values[(labels.get("listener"), labels.get("reason"))] = float(m.group(2))
origin = values.get(("proxy", "origin_not_allowed"), 0)
host = values.get(("proxy", "host_not_allowed"), 0)
print(f"proxy origin_not_allowed={origin:g} host_not_allowed={host:g}")
sys.exit(0 if origin > 0 and host > 0 else 1)
PY
) && rc=0 || rc=$?
tally metrics_count_refusals "$rc" "$why"

# 7: the status page, rendered by Chromium: the banner, the upstream, its key's fingerprint and the
# last hour's requests (the allowed page's 200 above), and a screenshot of it.
profile=$(mktemp -d "$work/profile.XXXXXX")
timeout -k 5 20 chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" \
  --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" --window-size=1280,900 \
  --screenshot="$work/status.png" "http://127.0.0.1:$admin_port/" > "$work/status-shot.err" 2>&1 || true
browse status_page "http://127.0.0.1:$admin_port/"
why=$(python3 - "$work/status_page.html" "$work/status.png" <<'PY'
import html, re, sys
dom = html.unescape(open(sys.argv[1]).read())
text = re.sub(r"<[^>]+>", " ", dom)
facts = {
    "banner": "Ready: every upstream has a usable key." in text,
    "upstream": re.search(r"<h2>openai ", dom) is not None,
    "fingerprint": re.search(r"sk-proj-…\w{4}:[0-9a-f]{8}", text) is not None,
    "last hour": re.search(r"requests, last hour\s+200 × [1-9]", text) is not None,
    "tokens": "tokens, last hour" in text,
}
missing = [k for k, ok in facts.items() if not ok]
with open(sys.argv[2], "rb") as f:
    png = f.read()
shot = png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
print(f"facts {sorted(k for k, ok in facts.items() if ok)}; screenshot {len(png)} bytes")
sys.exit(0 if not missing and shot else 1)
PY
) && rc=0 || rc=$?
tally status_page_renders_its_key_facts "$rc" "$why"

# 8: the key is nowhere a page, a browser or a log could show it.
leak=0
grep -qF -f "$work/key" "$work"/*.html "$work"/*.err "$work"/*.log "$work/counts.json" || leak=$?
# 1: no match in any of them (0 is a match, 2 an unreadable file)
[ "$leak" -eq 1 ] && rc=0 || rc=1
tally key_never_shown "$rc" "grep exit status $leak over the DOMs, the browser's and keyproxy's logs"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
