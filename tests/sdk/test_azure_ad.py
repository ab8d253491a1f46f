"""The official OpenAI SDK's AzureOpenAI client, holding a dummy api_key, through the real keyproxy
binary configured with `azure_ad`: keyproxy gets its Entra ID tokens from a stand-in token endpoint
(client-credentials grant, checked field by field) and an Azure OpenAI stand-in answers only
`Authorization: Bearer <a token the endpoint issued, unexpired>`, never the app's `api-key`. Tokens
live 2 s, so the SDK's calls span several refreshes. Run by .ci/run with the other SDK tests.
"""

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from test_sdks import start_keyproxy, wait_for

TENANT = "contoso-tenant"
CLIENT_ID = "22222222-sdk-app"
CLIENT_SECRET = "sdk-entra-secret~TESTONLY~0123456789abcdef"
LIFETIME = 2


class Entra:
    """What the stand-ins share: the tokens issued (with their expiry) and any complaint."""

    def __init__(self):
        self.lock = threading.Lock()
        self.issued = {}
        self.calls = 0
        self.complaints = []
        self.bearers = set()


STATE = Entra()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        path = urllib.parse.urlsplit(self.path).path
        if path == f"/{TENANT}/oauth2/v2.0/token":
            return self._token(urllib.parse.parse_qs(body.decode()))
        if path.startswith("/openai/deployments/") and path.endswith("/chat/completions"):
            return self._chat(json.loads(body))
        self._send(404, {"error": {"code": "404", "message": "Resource not found"}})

    def _token(self, form):
        want = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "scope": "https://cognitiveservices.azure.com/.default"}
        with STATE.lock:
            STATE.calls += 1
            for k, v in want.items():
                if form.get(k) != [v]:
                    STATE.complaints.append(k)
                    return self._send(401, {"error": "invalid_client", "error_description": f"AADSTS7000215: bad {k}",
                                            "error_codes": [7000215]})
            token = f"eyJ0eXAi.sdk{STATE.calls:04d}.entraTOKENsdk{STATE.calls:04d}"
            STATE.issued[token] = time.time() + LIFETIME
        self._send(200, {"token_type": "Bearer", "expires_in": LIFETIME, "ext_expires_in": LIFETIME,
                         "access_token": token})

    def _chat(self, request):
        auth = self.headers.get("authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        with STATE.lock:
            valid = token is not None and STATE.issued.get(token, 0) > time.time()
            if valid:
                STATE.bearers.add(token)
        if not valid or self.headers.get("api-key") is not None:
            return self._send(401, {"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint."}})
        self._send(200, {"id": "chatcmpl-azure", "object": "chat.completion", "created": 0, "model": "gpt-4o",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "hello from azure"}}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}})


@pytest.fixture(scope="module")
def keyproxy(tmp_path_factory):
    d = tmp_path_factory.mktemp("keyproxy-azure-ad")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stand_in = f"http://127.0.0.1:{server.server_address[1]}"
    secret = d / "client-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    secret.chmod(0o600)
    config = d / "keyproxy.toml"
    config.write_text(f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[upstreams]]
name = "azure"
provider = "azure"
base_url = "{stand_in}"
key = {{ azure_ad = {{ tenant_id = "{TENANT}", client_id = "{CLIENT_ID}", client_secret = {{ file = "{secret}" }}, authority = "{stand_in}" }} }}
""")
    log = d / "log"
    kp, addr, admin = start_keyproxy(config, log, d / "state")
    yield {"proxy": f"http://{addr}", "admin": f"http://{admin}", "log": log, "state": d / "state"}
    kp.terminate()
    assert kp.wait(timeout=20) == 0
    server.shutdown()
    leaked = [log.read_text()]
    db = d / "state" / "keyproxy.db"
    if db.exists():
        leaked.append(db.read_bytes().decode("latin-1"))
    for text in leaked:
        assert CLIENT_SECRET not in text, "the client secret leaked"
        assert "entraTOKENsdk" not in text, "a token leaked"


def test_azure_openai_sdk_with_a_dummy_key_is_served_with_entra_tokens_across_refreshes(keyproxy):
    client = openai.AzureOpenAI(api_key="dummy-the-app-holds-nothing", api_version="2024-10-21",
                                azure_endpoint=keyproxy["proxy"], max_retries=0)
    answers = []

    def calls_until_three_tokens():
        answers.append(client.chat.completions.create(model="gpt-4o",
                                                      messages=[{"role": "user", "content": "hi"}]))
        return len(STATE.bearers) >= 3

    wait_for(calls_until_three_tokens, "requests carrying three successive tokens")
    assert all(a.choices[0].message.content == "hello from azure" for a in answers)
    assert STATE.complaints == [], f"the token requests were malformed: {STATE.complaints}"
    import urllib.request
    with urllib.request.urlopen(keyproxy["admin"] + "/status") as r:
        status = r.read().decode()
    credential = json.loads(status)["upstreams"][0]["token_refresh"]
    assert credential["kind"] == "azure_ad" and credential["client"] == CLIENT_ID
    assert credential["last_result"] == "ok"
    assert CLIENT_SECRET not in status and "entraTOKENsdk" not in status
