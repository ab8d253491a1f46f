"""The official OpenAI and Anthropic Python SDKs, and curl, through the real keyproxy binary against
the stand-in provider: the app holds a dummy key; chat completions and messages work streamed and
not; a key the provider rejects raises the SDK's AuthenticationError whose own text (`str(e)`) carries
keyproxy's sentence and reason code; keyproxy's own refusals come in the upstream provider's error
shape; answers no retry can fix are not retried (`x-should-retry: false`), rate limits are.
Run by .ci/run in a virtualenv: pytest tests/sdk
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import anthropic
import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("KEYPROXY_BIN", str(ROOT / "target" / "debug" / "keyproxy"))
OPENAI_KEY = "sk-proj-" + "SdkOpenAI" * 17
ANTHROPIC_KEY = "sk-ant-api03-" + "SdkAnthropic" * 8
REVOKED_OPENAI = "sk-proj-" + "RevokedKey" * 15
REVOKED_ANTHROPIC = "sk-ant-api03-" + "RevokedAnthr" * 8
QUOTA_OPENAI = "sk-proj-" + "NoQuotaLeft" * 14 + "quota1"
RATE_OPENAI = "sk-proj-" + "RateLimited" * 14 + "rated1"


def wait_for(predicate, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_keyproxy(config, log, state, env=None):
    """The real binary on `config`, its JSON log in `log`: (process, proxy address, admin address)."""
    with open(log, "w") as log_file:
        kp = subprocess.Popen([BIN, "--log-format", "json", "run", "--config", str(config)], stderr=log_file,
                              env={**os.environ, **(env or {}), "KEYPROXY_STATE_DIR": str(state)})

    def listening(what):
        for line in log.read_text().splitlines():
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if v.get("message") == what:
                return v["addr"]
        return None

    addr = wait_for(lambda: listening("proxy listening"), "keyproxy to listen")
    admin = wait_for(lambda: listening("admin listening"), "the admin listener")
    return kp, addr, admin


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    d = tmp_path_factory.mktemp("keyproxy")
    port_file = d / "port"
    env = {**os.environ, "FAKE_PROVIDER_KEYS": f"{OPENAI_KEY},{ANTHROPIC_KEY}",
           "FAKE_QUOTA_KEYS": QUOTA_OPENAI, "FAKE_RATE_KEYS": RATE_OPENAI}
    fake = subprocess.Popen([sys.executable, str(ROOT / "tests" / "sdk" / "fake_provider.py"), str(port_file)], env=env)
    port = wait_for(lambda: port_file.exists() and port_file.read_text().strip(), "the stand-in provider")
    keys = {}
    for name, key in [("openai", OPENAI_KEY), ("anthropic", ANTHROPIC_KEY), ("stale", REVOKED_OPENAI), ("stale_anthropic", REVOKED_ANTHROPIC),
                      ("quota", QUOTA_OPENAI), ("rated", RATE_OPENAI)]:
        (d / name).write_text(key + "\n")
        keys[name] = d / name
    base = f"http://127.0.0.1:{port}"
    config = d / "keyproxy.toml"
    config.write_text(f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = {{ env = "KEYPROXY_SDK_ADMIN" }}

[[upstreams]]
name = "openai"
provider = "openai"
base_url = "{base}"
key = {{ file = "{keys['openai']}" }}

[[upstreams]]
name = "anthropic"
provider = "anthropic"
base_url = "{base}"
prefix = "/anthropic"
key = {{ file = "{keys['anthropic']}" }}

[[upstreams]]
name = "stale"
provider = "openai"
base_url = "{base}"
prefix = "/stale"
key = {{ file = "{keys['stale']}" }}

[[upstreams]]
name = "stale_anthropic"
provider = "anthropic"
base_url = "{base}"
prefix = "/stale-anthropic"
key = {{ file = "{keys['stale_anthropic']}" }}

[[upstreams]]
name = "quota"
provider = "openai"
base_url = "{base}"
prefix = "/quota"
key = {{ file = "{keys['quota']}" }}

[[upstreams]]
name = "rated"
provider = "openai"
base_url = "{base}"
prefix = "/rated"
key = {{ file = "{keys['rated']}" }}

[[upstreams]]
name = "versioned"
provider = "openai"
base_url = "{base}/v1"
prefix = "/versioned"
key = {{ file = "{keys['openai']}" }}

[[upstreams]]
name = "nokey"
provider = "openai"
base_url = "{base}"
prefix = "/nokey"
key = {{ env = "KEYPROXY_SDK_TEST_UNSET" }}

[[upstreams]]
name = "nokey_anthropic"
provider = "anthropic"
base_url = "{base}"
prefix = "/nokey-anthropic"
key = {{ env = "KEYPROXY_SDK_TEST_UNSET" }}

[[upstreams]]
name = "down_anthropic"
provider = "anthropic"
base_url = "http://127.0.0.1:1"
prefix = "/down-anthropic"
key = {{ file = "{keys['anthropic']}" }}
""")
    log = d / "log"
    kp, addr, admin = start_keyproxy(config, log, d / "state", {"KEYPROXY_SDK_ADMIN": ADMIN_TOKEN})
    global STAND_IN, ADMIN
    STAND_IN = base
    ADMIN = "http://" + admin
    yield f"http://{addr}"
    kp.terminate()
    assert kp.wait(timeout=20) == 0
    fake.terminate()
    text = log.read_text()
    for secret in [OPENAI_KEY, ANTHROPIC_KEY, REVOKED_OPENAI, REVOKED_ANTHROPIC, QUOTA_OPENAI, RATE_OPENAI]:
        assert secret[10:30] not in text, "a key leaked into the log"


STAND_IN = None
ADMIN = None
ADMIN_TOKEN = "sdk-admin-token-0123456789abcdef"


def attempts_seen(key):
    """How many requests with `key` reached the stand-in provider."""
    import urllib.request
    with urllib.request.urlopen(f"{STAND_IN}/__attempts") as r:
        return json.load(r).get(key[-6:], 0)


class Attempts:
    """An SDK's HTTP client that counts the requests it sends (retries included)."""

    def __init__(self, sdk):
        self.count = 0
        self.client = sdk.DefaultHttpxClient(event_hooks={"request": [self.seen]})

    def seen(self, request):
        self.count += 1


HI = [{"role": "user", "content": "hi"}]


def test_openai_chat_completion(proxy):
    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused-dummy")
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hello from the stand-in"


def test_openai_streamed_chat_completion(proxy):
    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused-dummy")
    stream = client.chat.completions.create(model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hi"}])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello from the stand-in"


def test_openai_rejected_key_raises_authentication_error_with_the_reason(proxy):
    client = openai.OpenAI(base_url=f"{proxy}/stale/v1", api_key="unused-dummy", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    err = raised.value
    assert err.status_code == 401
    assert err.code == "invalid_api_key", "the provider's own fields still parse"
    text = str(err)
    assert text.startswith("Error code: 401 - Incorrect API key provided"), "the provider's words come first"
    assert " — keyproxy: stale rejected the key" in text and "(reason: invalid_key)" in text, text
    assert err.response.headers["x-keyproxy-reason"] == "invalid_key"
    assert err.response.headers["x-should-retry"] == "false"
    kp = err.response.json()["keyproxy"]
    assert kp["reason"] == "invalid_key"
    assert "rejected the key" in kp["message"] and kp["upstream"] == "stale"


def test_anthropic_message(proxy):
    client = anthropic.Anthropic(base_url=f"{proxy}/anthropic", api_key="unused-dummy")
    message = client.messages.create(model="claude-3-5-haiku-latest", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "Hello from the stand-in"


def test_anthropic_streamed_message(proxy):
    client = anthropic.Anthropic(base_url=f"{proxy}/anthropic", api_key="unused-dummy")
    with client.messages.stream(model="claude-3-5-haiku-latest", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
    assert text == "Hello from the stand-in"


def test_anthropic_rejected_key_raises_authentication_error_with_the_reason(proxy):
    client = anthropic.Anthropic(base_url=f"{proxy}/stale-anthropic", api_key="unused-dummy", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as raised:
        client.messages.create(model="claude-3-5-haiku-latest", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    err = raised.value
    assert err.status_code == 401
    text = str(err)
    assert "invalid x-api-key — keyproxy: stale_anthropic rejected the key" in text, text
    assert "(reason: invalid_key)" in text and "dict" not in text, text
    body = err.response.json()
    assert body["error"]["type"] == "authentication_error", "the provider's own fields still parse"
    assert body["keyproxy"]["reason"] == "invalid_key"
    assert "rejected the key" in body["keyproxy"]["message"]


def test_openai_quota_exhausted_is_explained_and_not_retried(proxy):
    # Default retry settings: without x-should-retry the SDK would ask three times.
    client = openai.OpenAI(base_url=f"{proxy}/quota/v1", api_key="unused-dummy")
    before = attempts_seen(QUOTA_OPENAI)
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    text = str(raised.value)
    assert text.startswith("Error code: 429 - You exceeded your current quota"), text
    assert "keyproxy: " in text and "no quota or credit left" in text and "(reason: quota_exhausted)" in text, text
    assert attempts_seen(QUOTA_OPENAI) - before == 1


def test_openai_rate_limit_is_retried_as_the_provider_asks(proxy):
    client = openai.OpenAI(base_url=f"{proxy}/rated/v1", api_key="unused-dummy", max_retries=2)
    before = attempts_seen(RATE_OPENAI)
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    err = raised.value
    assert "(reason: rate_limited)" in str(err) and "rate-limiting" in str(err), str(err)
    assert err.response.headers["x-should-retry"] == "true"
    assert err.response.headers["retry-after-ms"] == "10", "the provider's own advice passes"
    assert attempts_seen(RATE_OPENAI) - before == 3


def test_a_base_url_ending_in_v1_is_named_in_the_404(proxy):
    client = openai.OpenAI(base_url=f"{proxy}/versioned/v1", api_key="unused-dummy")
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    text = str(raised.value)
    assert text.startswith("Error code: 404 - Invalid URL (POST /v1/v1/chat/completions)"), text
    assert "keyproxy: this went to /v1/v1/chat/completions because base_url" in text, text
    assert "remove /v1 from base_url" in text, text


def test_openai_no_usable_key_is_one_round_trip(proxy):
    counted = Attempts(openai)
    client = openai.OpenAI(base_url=f"{proxy}/nokey/v1", api_key="unused-dummy", http_client=counted.client)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    elapsed = time.monotonic() - started
    text = str(raised.value)
    assert text.startswith("Error code: 503 - keyproxy has no usable key for upstream nokey"), text
    assert "KEYPROXY_SDK_TEST_UNSET" in text and "(reason: missing_key)" in text, text
    assert counted.count == 1, "a 503 no retry can fix is not retried"
    print(f"no usable key: the exception after {elapsed * 1000:.0f} ms, {counted.count} attempt")


def test_anthropic_no_usable_key_comes_in_anthropics_shape_and_is_not_retried(proxy):
    counted = Attempts(anthropic)
    client = anthropic.Anthropic(base_url=f"{proxy}/nokey-anthropic", api_key="unused-dummy", http_client=counted.client)
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(model="claude-3-5-haiku-latest", max_tokens=64, messages=HI)
    err = raised.value
    assert err.status_code == 503
    body = err.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error", body
    assert "keyproxy has no usable key for upstream nokey_anthropic" in str(err), str(err)
    assert "(reason: missing_key)" in str(err), str(err)
    assert counted.count == 1


def test_anthropic_unreachable_upstream_comes_in_anthropics_shape(proxy):
    client = anthropic.Anthropic(base_url=f"{proxy}/down-anthropic", api_key="unused-dummy", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(model="claude-3-5-haiku-latest", max_tokens=64, messages=HI)
    err = raised.value
    assert err.status_code == 502
    assert err.response.json()["type"] == "error"
    text = str(err)
    assert "could not connect to upstream down_anthropic" in text and "(reason: upstream_unreachable)" in text, text
    assert "refused" in text.lower(), "the cause the OS gave is kept: " + text


def test_rotate_on_a_terminal_prompts_reads_one_line_and_does_not_echo(proxy):
    import pty
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(BIN, [BIN, "rotate", "--upstream", "openai", "--key-stdin", "--admin", ADMIN,
                        "--config", "/nonexistent/keyproxy.toml"], {**os.environ, "KEYPROXY_ADMIN_TOKEN": ADMIN_TOKEN})
    seen = b""
    deadline = time.time() + 20
    while b"then Enter: " not in seen:
        assert time.time() < deadline, seen
        seen += os.read(fd, 1024)
    assert b"Paste the new key for openai, then Enter: " in seen, seen
    # The prompt is written just before echo is turned off; a person is slower than that, a test
    # is not. The pty's settings are the terminal's: type once echo is off, as a person would.
    import termios
    while termios.tcgetattr(fd)[3] & termios.ECHO:
        assert time.time() < deadline, "keyproxy never turned echo off"
        time.sleep(0.01)
    os.write(fd, (OPENAI_KEY + "\n").encode())  # Enter, and no Ctrl-D: one line is the key
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "✓ openai:" in text, text
    assert OPENAI_KEY[8:40] not in text, "the pasted key was echoed"


NODE_MODULES = pathlib.Path(os.environ.get("KEYPROXY_NODE_MODULES", ROOT / "target" / "node-sdk" / "node_modules"))


def test_node_sdks(proxy):
    """The Node SDKs, installed by .ci/run (npm install --prefix target/node-sdk openai @anthropic-ai/sdk)."""
    if not (NODE_MODULES / "openai").is_dir() and not os.environ.get("KEYPROXY_REQUIRE_NODE"):
        pytest.skip(f"the Node SDKs are not installed in {NODE_MODULES}")
    run = subprocess.run(["node", str(ROOT / "tests" / "sdk" / "sdks.cjs"), proxy],
                         env={**os.environ, "NODE_PATH": str(NODE_MODULES)}, capture_output=True, text=True, timeout=120)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("\nok ") + run.stdout.startswith("ok ") == 10, run.stdout


def curl(*args):
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, check=True).stdout


def test_curl(proxy):
    body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    ok = json.loads(curl(f"{proxy}/v1/chat/completions", "-H", "content-type: application/json", "-d", body))
    assert ok["choices"][0]["message"]["content"] == "Hello from the stand-in"
    head = curl("-D", "-", "-o", "/dev/null", f"{proxy}/stale/v1/chat/completions", "-H", "content-type: application/json", "-d", body)
    assert head.startswith("HTTP/1.1 401")
    assert "x-keyproxy-reason: invalid_key" in head
