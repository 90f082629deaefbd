"""A loopback HTTP receiver for notifications: keeps every JSON body POSTed to it, with its arrival time.

What `uqa alerts --webhook URL` is pointed at in the season benchmark (benchmarks/season.py) and the
alert tests (tests/test_alerts.py). Binds 127.0.0.1 only; `close()` stops it.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                received.append((time.time(), json.loads(body or b"{}")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def find(self, *needles: str, since: float = 0.0) -> tuple[float, dict] | None:
        """The first notification received at or after `since` whose subject and body hold every needle."""
        for at, body in list(self.received):
            text = f"{body.get('subject')}\n{body.get('body')}"
            if at >= since and all(n in text for n in needles):
                return at, body
        return None

    def wait_for(self, *needles: str, timeout: float, since: float = 0.0) -> tuple[float, dict]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.find(*needles, since=since)
            if found:
                return found
            time.sleep(0.5)
        raise AssertionError(f"no notification with {needles} within {timeout} s; got {self.received}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
