#!/usr/bin/env bash
# The shipped monitoring, checked against the real thing: promtool checks the alert rules, then
# scrapes /metrics from a live keyproxy after real traffic (success, a 401, a rotation, a refused
# rotation) through the stand-in provider, with a pool's per-key series, and checks that too.
set -euo pipefail
cd "$(dirname "$0")/.."

promtool check rules config/prometheus/alerts.yml
promtool test rules config/prometheus/alerts.test.yml
python3 -c 'import json,sys; json.load(open("config/grafana/keyproxy.json"))'

work=$(mktemp -d)
# The state store of this run only, not the one in $HOME a developer's own keyproxy uses.
export KEYPROXY_STATE_DIR="$work/state"
cleanup() { kill "${kp_pid:-}" "${fake_pid:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

good="sk-proj-$(python3 -c 'print("MonitoringCheck" * 11)')"
bad="sk-proj-$(python3 -c 'print("WrongKeyWrongKey" * 10)')"
FAKE_PROVIDER_KEYS="$good" python3 tests/sdk/fake_provider.py "$work/port" &
fake_pid=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")

printf '%s\n' "$good" > "$work/good"
printf '%s\n' "$bad" > "$work/bad"
printf 'monitoring-admin-token-0123456789\n' > "$work/token"
cat > "$work/keyproxy.toml" <<TOML
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = { file = "$work/token" }
[[upstreams]]
name = "openai"
provider = "openai"
base_url = "http://127.0.0.1:$port"
key = { file = "$work/good" }
max_age = "365d"
[[upstreams]]
name = "stale"
provider = "openai"
base_url = "http://127.0.0.1:$port"
prefix = "/stale"
key = { file = "$work/bad" }
[[upstreams]]
name = "pooled"
provider = "openai"
base_url = "http://127.0.0.1:$port"
prefix = "/pooled"
keys = [ { file = "$work/good", name = "a", max_age = "365d" }, { file = "$work/bad", name = "b", max_age = "90d" } ]
TOML

./target/debug/keyproxy --log-format json run --config "$work/keyproxy.toml" 2> "$work/log" &
kp_pid=$!
addr() { python3 - "$work/log" "$1" <<'PY'
import json, sys, time
for _ in range(200):
    for line in open(sys.argv[1]):
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if v.get("message") == sys.argv[2]:
            print(v["addr"]); sys.exit(0)
    time.sleep(0.05)
sys.exit("keyproxy did not start")
PY
}
proxy=$(addr "proxy listening")
admin=$(addr "admin listening")

chat='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
curl -fsS "http://$proxy/v1/chat/completions" -H 'content-type: application/json' -d "$chat" > /dev/null
curl -sS "http://$proxy/stale/v1/chat/completions" -H 'content-type: application/json' -d "$chat" -o /dev/null -w '%{http_code}\n' | grep -q 401
curl -fsS -X POST "http://$admin/keys/openai" -H 'authorization: Bearer monitoring-admin-token-0123456789' -H 'content-type: text/plain' --data-binary "$good" > /dev/null
curl -sS -X POST "http://$admin/keys/openai" -H 'authorization: Bearer monitoring-admin-token-0123456789' -H 'content-type: text/plain' --data-binary "\"$good\"" -o /dev/null -w '%{http_code}\n' | grep -q 422

curl -fsS "http://$admin/metrics" > "$work/metrics"
grep -q 'keyproxy_auth_failures_total{reason="invalid_key",upstream="stale"} 1' "$work/metrics"
grep -q 'keyproxy_tokens_total{kind="input",upstream="openai"} 5' "$work/metrics"
grep -q 'keyproxy_key_state{key="b",upstream="pooled"} 0' "$work/metrics"
grep -q 'keyproxy_pool_key_expiry_timestamp_seconds{key="b",upstream="pooled"}' "$work/metrics"
promtool check metrics < "$work/metrics"
if grep -q -e "$good" -e "$bad" "$work/metrics" "$work/log"; then
  echo "a key leaked into /metrics or the log" >&2
  exit 1
fi
echo "monitoring: alert rules, dashboard and live /metrics are clean"
