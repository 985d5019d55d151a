"""A real HTTP server on loopback that serves `.npy` files the way Google Cloud Storage does (byte ranges, a strong
ETag, x-goog-hash), and can be told to misbehave the ways a mirror or a network does."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

PREFIX = "/quickdraw_dataset/full/numpy_bitmap/"


@dataclass
class Mirror:
    files: dict[str, bytes]  # "<class>.npy" -> its bytes
    ignore_range: bool = False  # answer every request with the whole file (200), as a plain server does
    cut_after: int | None = None  # send only this many body bytes, then close the connection...
    cuts_left: int = 0  # ...in this many responses
    html: bool = False  # answer everything with a sign-in page
    wrong_md5: bool = False
    pause_s: float = 0.0  # between 64 KiB pieces of a body, to give a test time to interrupt
    misplaced_range: bool = False  # answer a range with bytes 1000 further on than asked
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (file, Range header) of each GET
    body_bytes: int = 0  # body bytes written to sockets
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    def ranges_asked(self, name: str) -> list[str | None]:
        return [asked for file, asked in self.requests if file == name]


def serve(mirror: Mirror) -> ThreadingHTTPServer:
    """Start serving `mirror` on a free loopback port in a background thread; `.shutdown()` stops it."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            name = unquote(self.path.removeprefix(PREFIX))
            mirror.requests.append((name, self.headers.get("Range")))
            if mirror.html:
                return self.answer(200, b"<!DOCTYPE html><html><body>Sign in to continue</body></html>",
                                   {"Content-Type": "text/html; charset=utf-8"})
            if name not in mirror.files:
                return self.answer(404, b"No such object", {"Content-Type": "text/plain"})
            self.answer_file(mirror.files[name])

        def answer_file(self, data: bytes):
            digest = hashlib.md5(data + (b"x" if mirror.wrong_md5 else b""))
            headers = {
                "Content-Type": "application/octet-stream",
                "ETag": f'"{digest.hexdigest()}"',
                "x-goog-hash": f"crc32c=AAAAAA==,md5={base64.b64encode(digest.digest()).decode()}",
            }
            asked = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
            if_range = self.headers.get("If-Range")
            if mirror.ignore_range or not asked or (if_range and if_range != headers["ETag"]):
                return self.answer(200, data, headers)
            first = int(asked[1]) + (1000 if mirror.misplaced_range else 0)
            last = min(int(asked[2]) if asked[2] else len(data) - 1, len(data) - 1)
            if first >= len(data):
                return self.answer(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            self.answer(206, data[first:last + 1], headers)

        def answer(self, status: int, body: bytes, headers: dict):
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            if not mirror.ignore_range:
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if mirror.cuts_left > 0 and status in (200, 206) and len(body) > mirror.cut_after:
                mirror.cuts_left -= 1
                body = body[: mirror.cut_after]
                self.close_connection = True
            try:
                for start in range(0, len(body), 1 << 16):
                    piece = body[start:start + (1 << 16)]
                    self.wfile.write(piece)
                    self.wfile.flush()
                    mirror.body_bytes += len(piece)
                    time.sleep(mirror.pause_s)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client had what it needed

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    mirror.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
