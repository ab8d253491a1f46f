"""boto3's `bedrock-runtime` client through the real keyproxy binary, with dummy credentials and
`endpoint_url` = keyproxy: keyproxy strips boto3's own SigV4 signature and signs with the configured
AWS credentials (`key = { aws = … }`), and the Bedrock stand-in (bedrock_stand_in.py) checks every
signature with botocore's implementation before it answers. InvokeModel, Converse and ConverseStream
(a binary event stream, passed through untouched) succeed; a refusal raises botocore's ClientError
whose text carries keyproxy's sentence, and keyproxy's own refusals carry a code botocore shows.
Run by .ci/run in a virtualenv: pytest tests/sdk
"""

import json
import os
import subprocess
import sys
import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from test_sdks import ROOT, start_keyproxy, wait_for

AWS_ID = "ASIAQWERTY2345BOTOCO"
AWS_SECRET = "BotocoreVerifiesThisSecret0123456789abcd"
AWS_TOKEN = "IQoJb3JpZ2luX2VjEBotocoreSessionToken" + "SeSsIoN" * 20 + "=="
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


@pytest.fixture(scope="module")
def bedrock(tmp_path_factory):
    """(keyproxy's URL, the stand-in's URL); keyproxy's log is checked for secrets at the end."""
    d = tmp_path_factory.mktemp("bedrock")
    port_file = d / "port"
    stand_in = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "sdk" / "bedrock_stand_in.py"), str(port_file)],
        env={**os.environ, "STANDIN_AWS_ID": AWS_ID, "STANDIN_AWS_SECRET": AWS_SECRET,
             "STANDIN_AWS_TOKEN": AWS_TOKEN, "STANDIN_AWS_REGION": "eu-central-1"})
    port = wait_for(lambda: port_file.exists() and port_file.read_text().strip(), "the Bedrock stand-in")
    base = f"http://127.0.0.1:{port}"
    for name, value in [("id", AWS_ID), ("secret", AWS_SECRET), ("token", AWS_TOKEN)]:
        (d / name).write_text(value + "\n")
        (d / name).chmod(0o600)
    config = d / "keyproxy.toml"
    config.write_text(f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[upstreams]]
name = "bedrock"
provider = "bedrock"
base_url = "{base}"
key = {{ aws = {{ access_key_id = {{ file = "{d / 'id'}" }}, secret_access_key = {{ file = "{d / 'secret'}" }}, session_token = {{ file = "{d / 'token'}" }}, region = "eu-central-1" }} }}

[[upstreams]]
name = "bedrock_nokey"
provider = "bedrock"
base_url = "{base}"
prefix = "/nokey"
key = {{ env = "KEYPROXY_SDK_TEST_UNSET" }}
""")
    log = d / "log"
    kp, addr, _ = start_keyproxy(config, log, d / "state")
    yield f"http://{addr}", base
    kp.terminate()
    assert kp.wait(timeout=20) == 0
    stand_in.terminate()
    text = log.read_text()
    for secret in [AWS_SECRET, AWS_TOKEN[10:40], AWS_ID]:
        assert secret not in text, "an AWS secret leaked into the log"


def client(endpoint):
    # boto3 signs with these dummy credentials; keyproxy replaces the signature with its own.
    return boto3.client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=endpoint,
        aws_access_key_id="AKIADUMMYDUMMYDUMMY1", aws_secret_access_key="dummy-secret-the-app-holds",
        aws_session_token="dummy-session-token",
        config=Config(retries={"total_max_attempts": 1}),
    )


def verified(base):
    with urllib.request.urlopen(f"{base}/__verified") as r:
        return json.load(r)


def test_invoke_model_is_signed_by_keyproxy_and_verified_by_botocore(bedrock):
    proxy, base = bedrock
    before = verified(base)["verified"]
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 16,
                       "messages": [{"role": "user", "content": "hi from boto3"}]})
    out = client(proxy).invoke_model(modelId=MODEL, body=body, contentType="application/json", accept="application/json")
    answer = json.loads(out["body"].read())
    assert answer["content"][0]["text"] == "bedrock heard: hi from boto3"
    counts = verified(base)
    assert counts["verified"] == before + 1, counts
    assert counts["failed"] == 0, counts["last_failure"]


def test_converse_and_converse_stream_work_through_keyproxy(bedrock):
    proxy, base = bedrock
    c = client(proxy)
    out = c.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hello"}]}])
    assert out["output"]["message"]["content"][0]["text"] == "hello from converse"
    stream = c.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "stream"}]}])
    text, stop = "", None
    for event in stream["stream"]:
        if "contentBlockDelta" in event:
            text += event["contentBlockDelta"]["delta"]["text"]
        if "messageStop" in event:
            stop = event["messageStop"]["stopReason"]
    assert (text, stop) == ("streamed through keyproxy", "end_turn")
    counts = verified(base)
    assert counts["failed"] == 0, counts["last_failure"]


def test_a_refusal_raises_botocores_error_with_keyproxys_sentence(bedrock):
    proxy, _ = bedrock
    with pytest.raises(ClientError) as refused:
        client(proxy).invoke_model(modelId="anthropic.denied-model-v1:0", body="{}")
    text = str(refused.value)
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "You don't have access to the model" in text
    assert "keyproxy:" in text and "bedrock:InvokeModel" in text and "insufficient_permissions" in text, text


def test_keyproxys_own_refusal_has_a_code_and_a_sentence_in_botocore(bedrock):
    proxy, _ = bedrock
    with pytest.raises(ClientError) as refused:
        client(f"{proxy}/nokey").converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "x"}]}])
    error = refused.value.response["Error"]
    assert error["Code"] == "missing_key", error
    text = str(refused.value)
    assert "keyproxy has no usable key for upstream bedrock_nokey" in text, text
    assert "KEYPROXY_SDK_TEST_UNSET" in text


def test_anthropic_bedrock_with_dummy_credentials_works_through_keyproxy(bedrock):
    import anthropic
    proxy, base = bedrock
    c = anthropic.AnthropicBedrock(
        aws_access_key="AKIADUMMYDUMMYDUMMY1", aws_secret_key="dummy-secret-the-app-holds",
        aws_region="us-east-1", base_url=proxy, max_retries=0,
    )
    out = c.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi from AnthropicBedrock"}])
    assert out.content[0].text == "bedrock heard: hi from AnthropicBedrock"
    counts = verified(base)
    assert counts["failed"] == 0, counts["last_failure"]
