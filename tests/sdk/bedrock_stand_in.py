"""A stand-in for Amazon Bedrock's runtime API that VERIFIES every request's SigV4 signature with
botocore's own implementation: it takes the received method, URL, signed headers and body, recomputes
the signature with `botocore.auth.SigV4Auth` and the credentials keyproxy was given, and answers 403
InvalidSignatureException (as AWS does) when they differ. So a request succeeds only if keyproxy's
signature (made by the `aws-sigv4` crate) is one botocore would have made.

Answers InvokeModel (an Anthropic-shaped body), Converse, ConverseStream as a binary AWS event
stream, and ListAsyncInvokes (what `keyproxy check --probe` asks); a model id containing "denied" gets AccessDeniedException. GET /__verified says how many
signatures verified and failed. The expected credentials come from STANDIN_AWS_ID, STANDIN_AWS_SECRET,
STANDIN_AWS_TOKEN and STANDIN_AWS_REGION.
Usage: python3 bedrock_stand_in.py PORT_FILE   (binds 127.0.0.1:0 and writes the port to PORT_FILE)
"""

import binascii
import hmac
import json
import os
import re
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ID = os.environ["STANDIN_AWS_ID"]
SECRET = os.environ["STANDIN_AWS_SECRET"]
TOKEN = os.environ.get("STANDIN_AWS_TOKEN") or None
REGION = os.environ.get("STANDIN_AWS_REGION", "us-east-1")
COUNTS = {"verified": 0, "failed": 0, "last_failure": None}
LOCK = threading.Lock()

AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<id>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})$"
)


def verify(method, path, headers, body):
    """None when botocore computes the same signature over this request, else why not."""
    m = AUTH.match(headers.get("Authorization", ""))
    if not m:
        return "no SigV4 Authorization header"
    if m["id"] != ID:
        return f"signed with access key id {m['id']}, not the configured one"
    if (m["region"], m["service"]) != (REGION, "bedrock"):
        return f"credential scope {m['region']}/{m['service']}"
    if TOKEN is not None and headers.get("X-Amz-Security-Token") != TOKEN:
        return "the session token is missing or not the configured one"
    signed = m["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return f"host and x-amz-date must be signed: {signed}"
    request = AWSRequest(
        method=method,
        url=f"http://{headers['Host']}{path}",
        data=body,
        headers={name: headers[name] for name in signed},
    )
    timestamp = headers["X-Amz-Date"]
    request.context["timestamp"] = timestamp
    signer = SigV4Auth(Credentials(ID, SECRET, TOKEN), "bedrock", REGION)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, m["signature"]):
        return f"signature mismatch; botocore's canonical request was:\n{canonical}"
    return None


def event(event_type, payload):
    """One AWS event stream message (prelude, headers, payload, CRC32s), as Bedrock streams them."""
    headers = b""
    for name, value in [(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")]:
        n, v = name.encode(), value.encode()
        headers += struct.pack("B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
    body = json.dumps(payload).encode()
    total = 12 + len(headers) + len(body) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + headers + body
    return message + struct.pack(">I", binascii.crc32(message) & 0xFFFFFFFF)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, data, content_type="application/json", error_type=None):
        data = data.encode() if isinstance(data, str) else data
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.send_header("x-amzn-requestid", "0f0e0d0c-0000-4000-8000-000000000001")
        if error_type:
            self.send_header("x-amzn-ErrorType", f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/__verified":
            with LOCK:
                return self._send(200, json.dumps(COUNTS))
        self._handle(b"")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self._handle(body)

    def _handle(self, body):
        failure = verify(self.command, self.path, self.headers, body)
        with LOCK:
            COUNTS["failed" if failure else "verified"] += 1
            COUNTS["last_failure"] = failure or COUNTS["last_failure"]
        if failure:
            return self._send(403, json.dumps({"message": "The request signature we calculated does not match the signature you provided."}),
                              error_type="InvalidSignatureException")
        path = self.path.split("?")[0]
        if "denied" in path:
            return self._send(403, json.dumps({"message": "You don't have access to the model with the specified model ID."}),
                              error_type="AccessDeniedException")
        if path == "/async-invoke":
            return self._send(200, json.dumps({"asyncInvokeSummaries": []}))
        if path.endswith("/invoke"):
            request = json.loads(body or b"{}")
            said = request.get("messages", [{}])[-1].get("content", "")
            return self._send(200, json.dumps({
                "id": "msg_bedrock_1", "type": "message", "role": "assistant", "model": "claude",
                "content": [{"type": "text", "text": f"bedrock heard: {said}"}],
                "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 3},
            }))
        if path.endswith("/converse"):
            return self._send(200, json.dumps({
                "output": {"message": {"role": "assistant", "content": [{"text": "hello from converse"}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 3, "outputTokens": 3, "totalTokens": 6},
                "metrics": {"latencyMs": 1},
            }))
        if path.endswith("/converse-stream"):
            stream = b"".join([
                event("messageStart", {"role": "assistant"}),
                event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "streamed "}}),
                event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "through keyproxy"}}),
                event("contentBlockStop", {"contentBlockIndex": 0}),
                event("messageStop", {"stopReason": "end_turn"}),
                event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}, "metrics": {"latencyMs": 1}}),
            ])
            return self._send(200, stream, content_type="application/vnd.amazon.eventstream")
        self._send(404, json.dumps({"message": f"no such operation {path}"}), error_type="UnknownOperationException")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
