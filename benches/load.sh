#!/usr/bin/env bash
# The load benchmark, in one command:  bash benches/load.sh
#
# In one run it starts a fast local upstream (nginx, a small JSON body, keep-alive) and measures with
# the same load generator (wrk), connection count and duration:
#   (a) direct to the upstream, (b) nginx as a reverse proxy injecting Authorization (proxy_set_header,
#   keep-alive pool, one worker per core), (c) keyproxy
# alternating a/b/c for ROUNDS rounds and reporting medians: requests/s, p50/p99 latency, keyproxy's CPU
# time per request and RSS, and the ratios keyproxy/nginx and keyproxy/direct. Then, with benches/loadgen:
# a fixed-rate run (latency added over direct at p50/p99), an SSE run (added time to first event), and a
# run with the key rotated 100x/s during load (p99 with and without).
#
# The "tls" scenario is the production-shaped one: the upstream is nginx serving TLS from a private CA
# (generated at run time by benches/tls/gen-certs.sh) with `listen ... ssl http2`, so it offers h2 by ALPN as
# real providers do, and three proxies inject Authorization and speak TLS to it: nginx (HTTP/1.1 upstream,
# keep-alive pool, TLS sessions reused), HAProxy (`alpn h2,http/1.1`, `http-reuse always`) and keyproxy
# (`https://` base_url with `ca_file`; h2 when ALPN offers it). The app side stays plain HTTP/1.1 on loopback.
# Same wrk method: alternating rounds, medians, CPU per request from /proc (each proxy's whole process tree).
#
# Needs nginx and wrk, and for "tls" also haproxy and openssl (Debian packages; installed here if missing, as
# root) and a release build.
# Knobs: SCENARIOS ("plain tls"), ROUNDS (5), DURATION (10s), CONNECTIONS (64), RATE (2000 req/s), THREADS (1),
# TLS_UPSTREAM_H2 (1; 0 = the TLS upstream offers only http/1.1, to see what h2 itself costs or saves).
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-plain tls}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
RATE=${RATE:-2000}
THREADS=${THREADS:-1}
TLS_UPSTREAM_H2=${TLS_UPSTREAM_H2:-1}

for s in $SCENARIOS; do
  case $s in plain|tls) ;; *) echo "SCENARIOS: unknown scenario '$s' (plain, tls)" >&2; exit 2;; esac
done
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }

need=(nginx-light wrk)
want tls && need+=(haproxy openssl)
missing=()
for pkg in "${need[@]}"; do
  case $pkg in nginx-light) cmd=nginx;; *) cmd=$pkg;; esac
  command -v "$cmd" >/dev/null || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release --locked --bin keyproxy
LOADGEN=
want plain && LOADGEN=$(cargo bench --locked --bench loadgen --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "loadgen" and m.get("executable"):
        print(m["executable"])')

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KEY="sk-proj-$(python3 -c 'print("BenchKey0" * 17)')"
TOKEN="bench-admin-token-0123456789abcdef"
# One key file per keyproxy instance and upstream, and a state store of each instance's own:
# a rotation through the admin API writes the new key back to its file and retires the old one.
for f in key key-hold key-tls; do printf '%s\n' "$KEY" > "$work/$f"; chmod 600 "$work/$f"; done
printf '%s\n' "$TOKEN" > "$work/token"; chmod 600 "$work/token"

# wrk prints "Requests/sec:" and, with --latency, the 50% and 99% lines.
to_us() { python3 -c 'import sys,re
v=sys.argv[1]; m=re.match(r"([\d.]+)(us|ms|s)$", v)
n=float(m.group(1)); print(round(n*{"us":1,"ms":1e3,"s":1e6}[m.group(2)], 1))' "$1"; }
# shellcheck disable=SC2086  # $1 is a space-separated list of numbers, split on purpose
median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' $1; }
TICKS=$(getconf CLK_TCK)
# Stops what a scenario started, so the next one measures on a quiet machine.
stop_started() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }

# ---- plain: HTTP/1.1 everywhere (direct vs nginx vs keyproxy, then loadgen's runs) -------------------------
plain_scenario() {
UP=$(free_port); NG=$(free_port); KP=$(free_port); KA=$(free_port); HOLD=$(free_port)

mkdir -p "$work/nginx-up" "$work/nginx-proxy"
cat > "$work/nginx-up/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx-up/nginx.pid;
error_log $work/nginx-up/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP;
    location /v1/stream { default_type text/event-stream; return 200 "data: {\"n\":1}\n\ndata: [DONE]\n\n"; }
    location / { default_type application/json; return 200 '{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}]}'; }
  }
}
NGINX
cat > "$work/nginx-proxy/nginx.conf" <<NGINX
worker_processes $(nproc);
pid $work/nginx-proxy/nginx.pid;
error_log $work/nginx-proxy/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream provider { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NG;
    location / {
      proxy_pass http://provider;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host api.openai.com;
      proxy_set_header Authorization "Bearer $KEY";
      proxy_buffering off;
    }
  }
}
NGINX
nginx -c "$work/nginx-up/nginx.conf" -g 'daemon off;' & pids+=($!)
nginx -c "$work/nginx-proxy/nginx.conf" -g 'daemon off;' & pids+=($!)

cat > "$work/keyproxy.toml" <<TOML
[server]
listen = "127.0.0.1:$KP"
admin_listen = "127.0.0.1:$KA"
admin_token = { file = "$work/token" }
state_dir = "$work/state-plain"
[[upstreams]]
name = "openai"
provider = "openai"
base_url = "http://127.0.0.1:$UP"
key = { file = "$work/key" }
[[upstreams]]
name = "hold"
provider = "openai"
base_url = "http://127.0.0.1:$HOLD"
prefix = "/hold"
key = { file = "$work/key-hold" }
TOML
RUST_LOG=warn target/release/keyproxy run --config "$work/keyproxy.toml" 2> "$work/keyproxy.log" & KPID=$!; pids+=("$KPID")
for port in $UP $NG $KP; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v1/models" >/dev/null && break; sleep 0.05; done
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$KPID/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$KPID/status"; }
RSS_IDLE=$(rss_kib)

run_wrk() { wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$1/v1/chat/completions"; }

declare -A RPS P50 P99
echo "== throughput: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS alternating rounds"
for round in $(seq "$ROUNDS"); do
  for target in direct nginx keyproxy; do
    case $target in direct) port=$UP;; nginx) port=$NG;; keyproxy) port=$KP;; esac
    [ "$target" = keyproxy ] && t0=$(cpu_ticks)
    out=$(run_wrk "$port")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    p50=$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")
    RPS[$target]+="$rps "; P50[$target]+="$p50 "; P99[$target]+="$p99 "
    if [ "$target" = keyproxy ]; then
      t1=$(cpu_ticks)
      CPU_US+="$(python3 -c "print(round(($t1-$t0)/$TICKS*1e6/$reqs, 2))") "
    fi
    printf '  round %d %-9s %10s req/s  p50 %8s us  p99 %8s us\n' "$round" "$target" "$rps" "$p50" "$p99"
  done
done
RSS_LOADED=$(rss_kib)

echo
echo "== medians"
for t in direct nginx keyproxy; do
  printf '  %-9s %10.0f req/s  p50 %8.1f us  p99 %8.1f us\n' "$t" "$(median "${RPS[$t]}")" "$(median "${P50[$t]}")" "$(median "${P99[$t]}")"
done
kp=$(median "${RPS[keyproxy]}"); ng=$(median "${RPS[nginx]}"); di=$(median "${RPS[direct]}")
printf '  keyproxy/nginx  %.2fx   keyproxy/direct %.2fx\n' "$(python3 -c "print($kp/$ng)")" "$(python3 -c "print($kp/$di)")"
printf '  keyproxy CPU per request: %s us (median)   RSS idle %s KiB, after load %s KiB\n' "$(median "$CPU_US")" "$RSS_IDLE" "$RSS_LOADED"

if [ -n "$LOADGEN" ]; then
  echo
  echo "== fixed rate: $RATE req/s for $DURATION, open loop (latency added over direct)"
  "$LOADGEN" fixed --rate "$RATE" --duration "$DURATION" --direct "http://127.0.0.1:$UP/v1/chat/completions" \
    --nginx "http://127.0.0.1:$NG/v1/chat/completions" --keyproxy "http://127.0.0.1:$KP/v1/chat/completions"
  echo
  echo "== SSE: time to first event, added over direct"
  "$LOADGEN" sse --requests 2000 --direct "http://127.0.0.1:$UP/v1/stream" --keyproxy "http://127.0.0.1:$KP/v1/stream"
  echo
  echo "== rotation: the key rotated 100x/s during a fixed-rate run"
  "$LOADGEN" rotate --rate "$RATE" --duration "$DURATION" --keyproxy "http://127.0.0.1:$KP/v1/chat/completions" \
    --admin "http://127.0.0.1:$KA/keys/openai" --token "$TOKEN" --rotations-per-second 100
  echo
  echo "== 1,000 open streams: RSS"
  "$LOADGEN" streams --count 1000 --keyproxy "http://127.0.0.1:$KP/hold/v1/stream" --pid "$KPID" --hold-port "$HOLD"
fi
}

# ---- tls: the production shape. An upstream speaking TLS (private CA) and offering h2 by ALPN; the proxies ---
# ---- inject the key and speak TLS to it; apps still talk plain HTTP/1.1 to the proxy on loopback. ----------
tls_scenario() {
local certs=$work/tls-certs
bash benches/tls/gen-certs.sh "$certs"
UPS=$(free_port); NGS=$(free_port); HPS=$(free_port); KPS=$(free_port); KAS=$(free_port)
local h2=" http2" label="TLS+h2"
[ "$TLS_UPSTREAM_H2" = 0 ] && h2="" label="TLS, upstream h1 only"

mkdir -p "$work/nginx-up-tls" "$work/nginx-proxy-tls" "$work/haproxy"
# The upstream: like the plain one (1 worker, the same body), plus TLS and h2. X-Upstream-Protocol tells each
# caller which protocol and TLS version its upstream connection uses (a few bytes, the same for every proxy);
# /v1/auth-check answers 200 only when the injected Authorization is the bench key.
cat > "$work/nginx-up-tls/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx-up-tls/nginx.pid;
error_log $work/nginx-up-tls/error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  # TLS_UPSTREAM_MAX_REQUESTS: after this many requests on a connection the upstream says GOAWAY
  # (nginx's default is 1000, as real providers' front ends do now and then); requests in flight
  # above its last stream must be sent again on a new connection, not failed.
  keepalive_requests ${TLS_UPSTREAM_MAX_REQUESTS:-1000000};
  server {
    listen 127.0.0.1:$UPS ssl$h2;
    ssl_certificate $certs/server.pem;
    ssl_certificate_key $certs/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:bench:1m;
    add_header X-Upstream-Protocol "\$server_protocol \$ssl_protocol" always;
    location = /v1/auth-check {
      if (\$http_authorization != "Bearer $KEY") { return 401; }
      default_type text/plain; return 200 "ok";
    }
    location / { default_type application/json; return 200 '{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}]}'; }
  }
}
NGINX
# nginx as a peer: it cannot proxy h2 upstream, so HTTP/1.1 over TLS with a keep-alive pool and TLS session
# reuse, verifying the upstream against the private CA under the name localhost (SNI sent). nginx 1.22's
# default proxy_ssl_protocols stop at TLSv1.2; 1.3 is allowed explicitly, as the others negotiate it.
cat > "$work/nginx-proxy-tls/nginx.conf" <<NGINX
worker_processes $(nproc);
pid $work/nginx-proxy-tls/nginx.pid;
error_log $work/nginx-proxy-tls/error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream provider { server 127.0.0.1:$UPS; keepalive 128; }
  server {
    listen 127.0.0.1:$NGS;
    location / {
      proxy_pass https://provider;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host localhost;
      proxy_set_header Authorization "Bearer $KEY";
      proxy_buffering off;
      proxy_ssl_trusted_certificate $certs/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 2;
      proxy_ssl_server_name on;
      proxy_ssl_name localhost;
      proxy_ssl_protocols TLSv1.2 TLSv1.3;
      proxy_ssl_session_reuse on;
    }
  }
}
NGINX
# HAProxy as a peer: one thread per core, h2 to the upstream when ALPN offers it, connections shared between
# clients (http-reuse always), the certificate verified against the private CA for the name localhost. No log.
cat > "$work/haproxy/haproxy.cfg" <<HAPROXY
global
  nbthread $(nproc)
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend apps
  bind 127.0.0.1:$HPS
  default_backend provider
backend provider
  http-reuse always
  http-request set-header Host localhost
  http-request set-header Authorization "Bearer $KEY"
  server up 127.0.0.1:$UPS ssl verify required ca-file $certs/ca.pem sni str(localhost) verifyhost localhost alpn h2,http/1.1
HAPROXY
# keyproxy as shipped, with the upstream at https://localhost and the private CA as its ca_file.
cat > "$work/keyproxy-tls.toml" <<TOML
[server]
listen = "127.0.0.1:$KPS"
admin_listen = "127.0.0.1:$KAS"
state_dir = "$work/state-tls"
[[upstreams]]
name = "openai"
provider = "openai"
base_url = "https://localhost:$UPS"
ca_file = "$certs/ca.pem"
key = { file = "$work/key-tls" }
TOML
nginx -c "$work/nginx-up-tls/nginx.conf" -g 'daemon off;' & UPID=$!; pids+=("$UPID")
nginx -c "$work/nginx-proxy-tls/nginx.conf" -g 'daemon off;' & NPID=$!; pids+=("$NPID")
haproxy -db -f "$work/haproxy/haproxy.cfg" 2> "$work/haproxy/stderr.log" & HPID=$!; pids+=("$HPID")
RUST_LOG=warn target/release/keyproxy run --config "$work/keyproxy-tls.toml" 2> "$work/keyproxy-tls.log" & KPID=$!; pids+=("$KPID")
for _ in $(seq 100); do curl -fs --cacert "$certs/ca.pem" "https://localhost:$UPS/v1/models" >/dev/null && break; sleep 0.05; done
for port in $NGS $HPS $KPS; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v1/models" >/dev/null && break; sleep 0.05; done
done

# Each proxy's process tree (nginx: master and workers), for CPU time and its connections to the upstream.
declare -A TREE
TREE[upstream]="$UPID $(pgrep -P "$UPID" | tr '\n' ' ')"
TREE[nginx]="$NPID $(pgrep -P "$NPID" | tr '\n' ' ')"
TREE[haproxy]=$HPID
TREE[keyproxy]=$KPID
ticks() { local t=0 p; for p in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
upstream_conns() {  # established connections from these pids to the upstream port
  local re; re=$(tr ' ' '\n' <<<"$1" | grep . | paste -sd'|')
  ss -Htnp state established "( dport = :$UPS )" | grep -cE "pid=($re)," || true
}

echo "== TLS upstream: nginx, private CA, listen ssl$h2 (127.0.0.1:$UPS)"
curl -sS --http2 --cacert "$certs/ca.pem" -o /dev/null -w '  curl --http2 direct: HTTP/%{http_version} %{http_code}\n' \
  "https://localhost:$UPS/v1/chat/completions"
local target port hdrs code proto auth
for target in nginx haproxy keyproxy; do
  case $target in nginx) port=$NGS;; haproxy) port=$HPS;; keyproxy) port=$KPS;; esac
  hdrs=$(curl -sS -o /dev/null -D - "http://127.0.0.1:$port/v1/chat/completions" | tr -d '\r')
  code=$(awk 'NR==1 {print $2}' <<<"$hdrs")
  proto=$(awk -F': ' 'tolower($1)=="x-upstream-protocol" {print $2}' <<<"$hdrs")
  auth=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/auth-check")
  printf '  via %-9s %s; upstream side %s; key injected: %s\n' "$target" "$code" "${proto:-unknown}" \
    "$([ "$auth" = 200 ] && echo yes || echo "no ($auth)")"
  if [ "$code" != 200 ] || [ "$auth" != 200 ]; then
    echo "$target does not answer 200 through TLS; logs in $work are deleted on exit:" >&2
    tail -n 5 "$work"/*.log "$work"/*/error.log "$work"/haproxy/stderr.log >&2 || true
    exit 1
  fi
done

run_wrk() { wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$1/v1/chat/completions"; }
local round out rps reqs p50 p99 errs t0 u0 t1 u1 sampler HALF
HALF=$(python3 -c 'import re,sys; m=re.fullmatch(r"([\d.]+)([smh]?)", sys.argv[1])
print(float(m.group(1)) * {"":1,"s":1,"m":60,"h":3600}[m.group(2)] / 2)' "$DURATION")
declare -A RPS P50 P99 CPU UCPU CONNS ERRS
echo "== throughput over TLS: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS alternating rounds"
for round in $(seq "$ROUNDS"); do
  for target in nginx haproxy keyproxy; do
    case $target in nginx) port=$NGS;; haproxy) port=$HPS;; keyproxy) port=$KPS;; esac
    # Connections to the upstream, counted halfway through the run (after it, a proxy may have dropped some).
    (sleep "$HALF"; upstream_conns "${TREE[$target]}" > "$work/conns") & sampler=$!
    t0=$(ticks "${TREE[$target]}"); u0=$(ticks "${TREE[upstream]}")
    out=$(run_wrk "$port")
    t1=$(ticks "${TREE[$target]}"); u1=$(ticks "${TREE[upstream]}")
    wait "$sampler"; CONNS[$target]=$(cat "$work/conns")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    p50=$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")
    # Answers other than 2xx/3xx, and socket errors: a proxy failing fast must not read as a fast proxy.
    errs=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")
    RPS[$target]+="$rps "; P50[$target]+="$p50 "; P99[$target]+="$p99 "
    ERRS[$target]=$(( ${ERRS[$target]:-0} + errs ))
    CPU[$target]+="$(python3 -c "print(round(($t1-$t0)/$TICKS*1e6/$reqs, 2))") "
    UCPU[$target]+="$(python3 -c "print(round(($u1-$u0)/$TICKS*1e6/$reqs, 2))") "
    printf '  round %d %-9s %10s req/s  p50 %8s us  p99 %8s us  errors %s\n' "$round" "$target" "$rps" "$p50" "$p99" "$errs"
  done
done

echo
echo "== medians (TLS upstream; CPU per request: the proxy's process tree / the upstream nginx)"
for target in nginx haproxy keyproxy; do
  printf '  %-9s %10.0f req/s  p50 %8.1f us  p99 %8.1f us  CPU %6.2f / %5.2f us/req  upstream conns %3s  errors %s\n' \
    "$target" "$(median "${RPS[$target]}")" "$(median "${P50[$target]}")" "$(median "${P99[$target]}")" \
    "$(median "${CPU[$target]}")" "$(median "${UCPU[$target]}")" "${CONNS[$target]}" "${ERRS[$target]}"
done
local kp ng hp
kp=$(median "${RPS[keyproxy]}"); ng=$(median "${RPS[nginx]}"); hp=$(median "${RPS[haproxy]}")
python3 - "$label" "$kp" "$ng" "$hp" "${RPS[keyproxy]}" "${RPS[nginx]}" "${RPS[haproxy]}" <<'PY'
import sys
label = sys.argv[1]
kp, ng, hp = map(float, sys.argv[2:5])
k, n, h = ([float(x) for x in a.split()] for a in sys.argv[5:8])
print("  per round: keyproxy/nginx " + " ".join(f"{a/b:.2f}" for a, b in zip(k, n))
      + "   keyproxy/HAProxy " + " ".join(f"{a/b:.2f}" for a, b in zip(k, h)))
best = "nginx" if ng >= hp else "HAProxy"
print(f"  {label}: keyproxy/nginx {kp/ng:.2f}x   keyproxy/HAProxy {kp/hp:.2f}x   best peer: {best} "
      f"({max(ng, hp):.0f} req/s); keyproxy/best peer {kp/max(ng, hp):.2f}x")
PY
}

for s in $SCENARIOS; do
  echo
  echo "######## scenario: $s"
  case $s in plain) plain_scenario;; tls) tls_scenario;; esac
  stop_started
done
