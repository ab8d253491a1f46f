"""The official OpenAI and Anthropic Python SDKs, and curl, through the real keyproxy binary against
the stand-in provider: the app holds a dummy key; chat completions and messages work streamed and
not; a key the provider rejects raises the SDK's AuthenticationError carrying keyproxy's reason and
sentence. Run by .ci/run in a virtualenv: pytest tests/sdk
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


def wait_for(predicate, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    d = tmp_path_factory.mktemp("keyproxy")
    port_file = d / "port"
    env = {**os.environ, "FAKE_PROVIDER_KEYS": f"{OPENAI_KEY},{ANTHROPIC_KEY}"}
    fake = subprocess.Popen([sys.executable, str(ROOT / "tests" / "sdk" / "fake_provider.py"), str(port_file)], env=env)
    port = wait_for(lambda: port_file.exists() and port_file.read_text().strip(), "the stand-in provider")
    keys = {}
    for name, key in [("openai", OPENAI_KEY), ("anthropic", ANTHROPIC_KEY), ("stale", REVOKED_OPENAI), ("stale_anthropic", REVOKED_ANTHROPIC)]:
        (d / name).write_text(key + "\n")
        keys[name] = d / name
    base = f"http://127.0.0.1:{port}"
    config = d / "keyproxy.toml"
    config.write_text(f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

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
""")
    log = d / "log"
    with open(log, "w") as log_file:
        kp = subprocess.Popen([BIN, "--log-format", "json", "run", "--config", str(config)], stderr=log_file)

    def listening():
        for line in log.read_text().splitlines():
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if v.get("message") == "proxy listening":
                return v["addr"]
        return None

    addr = wait_for(listening, "keyproxy to listen")
    yield f"http://{addr}"
    kp.terminate()
    assert kp.wait(timeout=20) == 0
    fake.terminate()
    text = log.read_text()
    for secret in [OPENAI_KEY, ANTHROPIC_KEY, REVOKED_OPENAI, REVOKED_ANTHROPIC]:
        assert secret[10:30] not in text, "a key leaked into the log"


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
    assert err.response.headers["x-keyproxy-reason"] == "invalid_key"
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
    body = err.response.json()
    assert body["error"]["type"] == "authentication_error", "the provider's own fields still parse"
    assert body["keyproxy"]["reason"] == "invalid_key"
    assert "rejected the key" in body["keyproxy"]["message"]


def curl(*args):
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, check=True).stdout


def test_curl(proxy):
    body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    ok = json.loads(curl(f"{proxy}/v1/chat/completions", "-H", "content-type: application/json", "-d", body))
    assert ok["choices"][0]["message"]["content"] == "Hello from the stand-in"
    head = curl("-D", "-", "-o", "/dev/null", f"{proxy}/stale/v1/chat/completions", "-H", "content-type: application/json", "-d", body)
    assert head.startswith("HTTP/1.1 401")
    assert "x-keyproxy-reason: invalid_key" in head
