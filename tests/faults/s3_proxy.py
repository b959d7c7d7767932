"""A fault-injecting HTTP proxy on loopback, in front of the moto server: S3 throttling and 5xx on demand."""
from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SLOW_DOWN = (503, "SlowDown", "Please reduce your request rate.")
INTERNAL = (500, "InternalError", "We encountered an internal error. Please try again.")


class FaultyS3Proxy:
    """Forwards every request to `upstream`, except the ones the fault plan answers itself.

    fail_first: the first N requests get an error without reaching S3 (a throttled burst).
    fail_every: then every k-th request gets one (errors spread over the whole run).
    fail_after_forward: the failed request is forwarded first and only its answer replaced, as when
      S3 commits a PUT but the connection breaks before the client sees the 200.
    always_fail_method: every request with this method fails (retries cannot help); with
      always_fail_path, only those whose path starts with it (e.g. "/bucket/").
    Errors alternate between 503 SlowDown and 500 InternalError. Loopback only; bounded by the
    test's lifetime (use as a context manager).
    """

    def __init__(self, upstream: str, fail_first: int = 0, fail_every: int = 0,
                 fail_after_forward: bool = False, always_fail_method: str | None = None,
                 always_fail_path: str = ""):
        self.upstream = urlparse(upstream)
        self.fail_first, self.fail_every = fail_first, fail_every
        self.fail_after_forward = fail_after_forward
        self.always_fail_method = always_fail_method
        self.always_fail_path = always_fail_path
        self.lock = threading.Lock()
        self.seen = 0
        self.injected: Counter[tuple[str, int]] = Counter()   # (method, status) -> count
        self.forwarded: Counter[tuple[str, str]] = Counter()  # (method, path) -> count
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultyS3Proxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def injected_total(self) -> int:
        return sum(self.injected.values())

    def _decide(self, method: str, path: str = "") -> tuple[int, str, str] | None:
        with self.lock:
            self.seen += 1
            n = self.seen
        if self.always_fail_method and method == self.always_fail_method and path.startswith(self.always_fail_path):
            return INTERNAL
        if n <= self.fail_first or (self.fail_every and n > self.fail_first and n % self.fail_every == 0):
            return SLOW_DOWN if n % 2 else INTERNAL
        return None

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _error(self, fault: tuple[int, str, str]) -> None:
                status, code, message = fault
                body = b"" if self.command == "HEAD" else (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>{message}</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with proxy.lock:
                    proxy.injected[(self.command, status)] += 1

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                with proxy.lock:
                    proxy.forwarded[(self.command, self.path.split("?")[0])] += 1
                return resp.status, resp.getheaders(), data

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._decide(self.command, self.path)
                if fault and not proxy.fail_after_forward:
                    return self._error(fault)
                status, headers, data = self._forward(body)
                if fault:
                    return self._error(fault)
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                # a HEAD answer carries the object's length, not the (empty) body's
                length = dict((k.lower(), v) for k, v in headers).get("content-length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
