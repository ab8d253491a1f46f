"""A stand-in for OpenAI and Anthropic, for driving the official SDKs through keyproxy without a network.

It accepts only the keys listed in FAKE_PROVIDER_KEYS (comma-separated) and answers like the real APIs:
chat completions and messages, streamed (SSE) and not, and the providers' own 401 bodies for a wrong key.
A key in FAKE_QUOTA_KEYS gets OpenAI's 429 insufficient_quota, one in FAKE_RATE_KEYS its 429 rate limit
(with retry-after-ms). GET /__attempts answers how many requests each key made (by its last 6 characters),
so a test can tell how often an SDK retried.
Usage: python3 fake_provider.py PORT_FILE   (binds 127.0.0.1:0 and writes the port to PORT_FILE)
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def keys(name):
    return set(k for k in os.environ.get(name, "").split(",") if k)


KEYS = keys("FAKE_PROVIDER_KEYS")
QUOTA_KEYS = keys("FAKE_QUOTA_KEYS")
RATE_KEYS = keys("FAKE_RATE_KEYS")
ATTEMPTS = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body, content_type="application/json"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", "req_fake_123")
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for event in events:
            chunk = event.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def do_GET(self):
        if self.path == "/__attempts":
            with LOCK:
                self._send(200, json.dumps(ATTEMPTS))
            return
        self._send(200, json.dumps({"object": "list", "data": []}))

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        key = (self.headers.get("authorization") or "").removeprefix("Bearer ") or self.headers.get("x-api-key") or ""
        with LOCK:
            ATTEMPTS[key[-6:]] = ATTEMPTS.get(key[-6:], 0) + 1
        if key in QUOTA_KEYS:
            self._send(429, json.dumps({"error": {
                "message": "You exceeded your current quota, please check your plan and billing details.",
                "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}))
            return
        if key in RATE_KEYS:
            self.send_response(429)
            data = json.dumps({"error": {"message": "Rate limit reached for gpt-4o-mini on requests per min (RPM).",
                                         "type": "requests", "param": None, "code": "rate_limit_exceeded"}}).encode()
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("retry-after-ms", "10")
            self.end_headers()
            self.wfile.write(data)
            return
        if self.path.startswith("/v1/v1/"):
            self._send(404, json.dumps({"error": {"message": f"Invalid URL (POST {self.path})",
                                                  "type": "invalid_request_error", "param": None, "code": None}}))
        elif self.path.endswith("/chat/completions"):
            self.openai(body)
        elif self.path.endswith("/messages"):
            self.anthropic(body)
        else:
            self._send(404, json.dumps({"error": {"message": "not found", "type": "invalid_request_error"}}))

    def openai(self, body):
        if (self.headers.get("authorization") or "").removeprefix("Bearer ") not in KEYS:
            shown = (self.headers.get("authorization") or "")[-4:]
            self._send(401, json.dumps({"error": {
                "message": f"Incorrect API key provided: sk-****{shown}. You can find your API key at https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}))
            return
        if body.get("stream"):
            chunks = []
            for i, word in enumerate(["Hello", " from", " the", " stand-in"]):
                delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
                chunks.append("data: " + json.dumps({
                    "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": body.get("model"),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}) + "\n\n")
            chunks.append("data: [DONE]\n\n")
            self._sse(chunks)
            return
        self._send(200, json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the stand-in"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}))

    def anthropic(self, body):
        if self.headers.get("x-api-key") not in KEYS or not self.headers.get("anthropic-version"):
            self._send(401, json.dumps({"type": "error", "error": {"type": "authentication_error",
                                                                   "message": "invalid x-api-key"},
                                        "request_id": "req_fake_anthropic"}))
            return
        if body.get("stream"):
            events = [
                ("message_start", {"type": "message_start", "message": {
                    "id": "msg_1", "type": "message", "role": "assistant", "model": body.get("model"),
                    "content": [], "stop_reason": None, "stop_sequence": None,
                    "usage": {"input_tokens": 5, "output_tokens": 1}}}),
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": "Hello from the stand-in"}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                   "usage": {"output_tokens": 5}}),
                ("message_stop", {"type": "message_stop"}),
            ]
            self._sse([f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events])
            return
        self._send(200, json.dumps({
            "id": "msg_1", "type": "message", "role": "assistant", "model": body.get("model"),
            "content": [{"type": "text", "text": "Hello from the stand-in"}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 5}}))


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(sys.argv[1], "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
