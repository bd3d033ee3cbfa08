"""A scriptable stand-in for a Tinker server, for failures the real one cannot
produce on demand (401, 500, a malicious archive behind a signed URL).

Standard library only: ``http.server`` in a thread on a loopback port.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeApi:
    def __init__(self) -> None:
        self.status = 200  # answer to every /api/v1 call except the session ones when not 200
        self.session_status = 200
        self.archive: bytes = b""
        self.archive_status = 200
        self.archive_truncated = False  # announce more bytes than are sent, then hang up
        self.archive_chunk_delay = 0.0  # seconds between 64 KiB chunks of the archive
        self.requests: list[str] = []
        self.url = ""


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json", **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: Any) -> None:
            self._send(status, json.dumps(data).encode())

        def _route(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            path = self.path
            api.requests.append(f"{self.command} {path}")
            if path == "/archive.tar":
                if api.archive_truncated:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(api.archive) + 100_000))
                    self.end_headers()
                    self.wfile.write(api.archive)
                    self.close_connection = True
                    return None
                if api.archive_chunk_delay:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(api.archive)))
                    self.end_headers()
                    try:
                        for start in range(0, len(api.archive), 1 << 16):
                            self.wfile.write(api.archive[start : start + (1 << 16)])
                            time.sleep(api.archive_chunk_delay)
                    except OSError:
                        pass  # the client went away
                    return None
                return self._send(api.archive_status, api.archive, "application/x-tar")
            if path.endswith("/create_session"):
                if api.session_status != 200:
                    return self._json(api.session_status, {"detail": "session refused"})
                return self._json(200, {"type": "create_session", "session_id": "fake-session"})
            if path.endswith("/session_heartbeat"):
                return self._json(200, {"type": "session_heartbeat"})
            if path.endswith("/telemetry"):
                return self._json(200, {"status": "accepted"})
            if api.status != 200:
                return self._json(api.status, {"detail": f"fake failure {api.status}"})
            if path.endswith("/archive"):
                return self._send(302, b"", Location=f"{api.url}/archive.tar")
            return self._json(404, {"detail": "not found"})

        do_GET = do_POST = do_DELETE = _route

    return Handler


@contextmanager
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
