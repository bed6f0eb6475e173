"""The trainer's buffer client rides out a buffer that is away for a while (its pod restarted
or recreated by the operator): connection errors and 502/503 are retried, up to a limit."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import pytest
from rlpost_trainer.buffer_client import BatchNotReady, BufferClient, BufferError


class FakeBuffer:
    """POST /weight_version and GET /batch; `down` answers 503, `stop` closes the port."""

    def __init__(self, port: int = 0):
        self.down = 0
        self.calls: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                fake.calls.append(self.path)
                if fake.down:
                    fake.down -= 1
                    return self.answer(503, {"detail": "starting"})
                self.answer(200, {"version": 3})

            def do_GET(self):  # noqa: N802
                fake.calls.append(self.path)
                self.answer(504, {"detail": "batch for step 0 not ready after 1s"})

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_503_and_a_closed_port_are_retried_until_the_buffer_is_back():
    buf = FakeBuffer()
    client = BufferClient(f"http://127.0.0.1:{buf.port}", None, unreachable_s=30)
    buf.down = 2
    client.post_weight_version(3)
    assert buf.calls == ["/weight_version"] * 3
    # the buffer pod is recreated: nothing listens for a while, then it is back
    port = buf.port
    buf.stop()
    back: list[FakeBuffer] = []
    threading.Timer(1.5, lambda: back.append(FakeBuffer(port))).start()
    t0 = time.monotonic()
    client.post_weight_version(3)
    assert time.monotonic() - t0 >= 1.0 and back[0].calls == ["/weight_version"]
    # a batch that is not ready yet is not an outage: it is reported at once
    with pytest.raises(BatchNotReady):
        client.batch(0, 1.0)
    back[0].stop()


def test_a_buffer_away_longer_than_the_limit_is_an_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = BufferClient(f"http://127.0.0.1:{port}", None, unreachable_s=1.0)
    with pytest.raises(BufferError, match="unreachable for 1s"):
        client.post_weight_version(1)
