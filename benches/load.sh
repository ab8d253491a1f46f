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
# Needs nginx and wrk (Debian packages; installed here if missing, as root) and a release build.
# Knobs: ROUNDS (5), DURATION (10s), CONNECTIONS (64), RATE (2000 req/s), THREADS (1).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
RATE=${RATE:-2000}
THREADS=${THREADS:-1}

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light wrk >/dev/null
fi
cargo build --release --locked --bin keyproxy
LOADGEN=$(cargo bench --locked --bench loadgen --no-run --message-format=json 2>/dev/null \
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
UP=$(free_port); NG=$(free_port); KP=$(free_port); KA=$(free_port); HOLD=$(free_port)
KEY="sk-proj-$(python3 -c 'print("BenchKey0" * 17)')"
TOKEN="bench-admin-token-0123456789abcdef"

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

printf '%s\n' "$KEY" > "$work/key"; chmod 600 "$work/key"
printf '%s\n' "$TOKEN" > "$work/token"; chmod 600 "$work/token"
cat > "$work/keyproxy.toml" <<TOML
[server]
listen = "127.0.0.1:$KP"
admin_listen = "127.0.0.1:$KA"
admin_token = { file = "$work/token" }
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
key = { file = "$work/key" }
TOML
RUST_LOG=warn target/release/keyproxy run --config "$work/keyproxy.toml" 2> "$work/keyproxy.log" & KPID=$!; pids+=($KPID)
for port in $UP $NG $KP; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v1/models" >/dev/null && break; sleep 0.05; done
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$KPID/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$KPID/status"; }
TICKS=$(getconf CLK_TCK)
RSS_IDLE=$(rss_kib)

# wrk prints "Requests/sec:" and, with --latency, the 50% and 99% lines.
run_wrk() { wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$1/v1/chat/completions"; }
to_us() { python3 -c 'import sys,re
v=sys.argv[1]; m=re.match(r"([\d.]+)(us|ms|s)$", v)
n=float(m.group(1)); print(round(n*{"us":1,"ms":1e3,"s":1e6}[m.group(2)], 1))' "$1"; }

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

median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' $1; }
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
