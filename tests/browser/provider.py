#!/usr/bin/env python3
"""Stand-in provider for tests/browser/run.sh (stdlib only).

    provider.py PORT_FILE COUNT_FILE

Listens on 127.0.0.1 (a free port, written to PORT_FILE once it accepts connections) and answers
every request with `200 {"ok":true}`. It counts requests by "METHOD path" and writes the counts to
COUNT_FILE (atomically, before answering), so run.sh reads them from disk: nothing about the count
is reachable through keyproxy. No header, body or key is ever written anywhere; the only thing
recorded about credentials is whether `authorization` was `Bearer <the key>`, checked against the
SHA-256 in $EXPECT_AUTH_SHA256.

Every answer also carries `Access-Control-Allow-Origin: *`, the most permissive thing a provider
could send: if keyproxy ever forwarded a page's request, that page could read the answer unless
keyproxy strips the header. A browser test that passes only because the provider forgot CORS
would prove nothing.
"""

import hashlib
import http.server
import json
import os
import sys
import threading

port_file, count_file = sys.argv[1], sys.argv[2]
expect_auth = os.environ.get("EXPECT_AUTH_SHA256", "")
lock = threading.Lock()
counts = {"requests": {}, "key_injected": 0, "key_missing": 0}


def record(method, path, authorization):
    with lock:
        key = f"{method} {path.split('?', 1)[0]}"
        counts["requests"][key] = counts["requests"].get(key, 0) + 1
        digest = hashlib.sha256(authorization.encode()).hexdigest() if authorization else ""
        counts["key_injected" if digest and digest == expect_auth else "key_missing"] += 1
        tmp = count_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(counts, f, sort_keys=True)
        os.replace(tmp, count_file)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        record(self.command, self.path, self.headers.get("authorization", ""))
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("access-control-allow-origin", "*")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = handle_any

    def log_message(self, *args):  # quiet: and never a header
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(count_file, "w") as f:
    json.dump(counts, f, sort_keys=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.replace(port_file + ".tmp", port_file)
server.serve_forever()
