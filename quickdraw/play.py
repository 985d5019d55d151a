"""`play`: a page where a person draws and the best model guesses, served by Python's standard-library HTTP server.

The page (quickdraw/play_page/: plain HTML, CSS and JS; nothing is fetched from anywhere else) posts its canvas as a
PNG when a stroke ends; the server turns it into a bitmap as `predict` turns an image (quickdraw.images) and answers
with best_model/model.onnx's likeliest classes, run by onnxruntime (quickdraw.portable).

    GET  /         the page (and /play.css, /play.js)
    GET  /model    {"classes", "experiment", "members", "validation_accuracy"}
    POST /guess    a PNG of the drawing -> {"guesses": [{"class", "probability"}, ...]} (best first)

Anything else is answered 404 or 405; a body over MAX_BODY_BYTES 413, one that is not a drawing 400. At most
CONCURRENT_GUESSES requests are read and classified at once (the others wait their turn), so memory stays bounded
whatever the number of clients."""

from __future__ import annotations

import errno
import io
import ipaddress
import json
import shlex
import socket
import sys
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from quickdraw import strict_json
from quickdraw.best_model import CONFIG_FILE, exported_folder
from quickdraw.errors import UserError
from quickdraw.images import drawing_bitmap
from quickdraw.portable import ONNX_FILE, PortableModel
from quickdraw.safe_files import MODEL_LIMIT
from quickdraw.storage import Location, first_line

PAGE = Path(__file__).with_name("play_page")
STATIC = {"/": ("index.html", "text/html"), "/play.css": ("play.css", "text/css"),
          "/play.js": ("play.js", "text/javascript")}
GUESS_PATH, MODEL_PATH = "/guess", "/model"
TOP = 3  # classes in a guess
MAX_BODY_BYTES = 1 << 20  # a 400x400 canvas's PNG is some 10 kB
DISCARD_BYTES = 16 << 20  # of a body over MAX_BODY_BYTES, read and dropped before the connection closes
MAX_SIDE = 2048  # pixels of a posted drawing's longer side, checked before it is decoded
CONCURRENT_GUESSES = 4
WAIT_SECONDS = 10  # for a turn to guess (503 after), and for a client that stops sending mid-request


@dataclass
class Game:
    """What the handler serves: the model, what the page shows about it, and the page's files."""

    model: PortableModel
    about: bytes  # /model's JSON
    files: dict[str, tuple[bytes, str]]  # path -> (content, content type)
    turns: threading.BoundedSemaphore

    @classmethod
    def load(cls, experiment: Location) -> Game:
        folder = exported_folder(experiment)
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            model = PortableModel.from_bytes((folder / ONNX_FILE).read_bytes(MODEL_LIMIT))
        except (OSError, ValueError) as e:
            raise UserError(f"{folder / ONNX_FILE} cannot be loaded ({first_line(e)}); run `python tune_search.py "
                            f"report {shlex.quote(str(experiment))}` to export it again") from None
        about = strict_json.nulled({  # an accuracy that an older export wrote as NaN is null
            "classes": model.classes, "experiment": experiment.name, "members": len(config["members"]),
            "validation_accuracy": config["validation_accuracy"]})
        files = {path: ((PAGE / name).read_bytes(), f"{kind}; charset=utf-8") for path, (name, kind) in STATIC.items()}
        return cls(model, strict_json.dumps(about).encode(), files, threading.BoundedSemaphore(CONCURRENT_GUESSES))

    def guess(self, png: bytes) -> list[dict]:
        """The TOP likeliest classes of a posted drawing, best first; a UserError when it is not one."""
        bitmap = drawing_bitmap(io.BytesIO(png), "the posted drawing", MAX_SIDE)
        probabilities = self.model.probabilities(bitmap[np.newaxis])[0]
        return [{"class": self.model.classes[i], "probability": float(probabilities[i])}
                for i in probabilities.argsort()[::-1][:TOP]]


class PlayServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], game: Game):
        super().__init__(address, PlayHandler)
        self.game = game

    def handle_error(self, request, client_address):
        """A client that goes away or stalls mid-request costs nothing but its connection; anything else is one line."""
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            print(f"tune_search.py: warning: a request from {client_address[0]} failed "
                  f"({type(error).__name__}: {first_line(error)})", file=sys.stderr)


class PlayHandler(BaseHTTPRequestHandler):
    server_version = "quickdraw-tune-play"
    timeout = WAIT_SECONDS  # a connection that stalls mid-request is dropped, freeing its thread

    @property
    def route(self) -> str:
        """The requested path without its query."""
        return self.path.split("?", 1)[0]

    def do_GET(self):
        path = self.route
        if path == MODEL_PATH:
            self.send(HTTPStatus.OK, self.server.game.about, "application/json")
        elif path in self.server.game.files:
            self.send(HTTPStatus.OK, *self.server.game.files[path])
        elif path == GUESS_PATH:
            self.refuse(HTTPStatus.METHOD_NOT_ALLOWED, "post drawings here", allow="POST")
        else:
            self.refuse(HTTPStatus.NOT_FOUND, f"no page at {path}: the page is at /")

    def do_POST(self):
        if self.route != GUESS_PATH:
            if self.route in (*self.server.game.files, MODEL_PATH):
                return self.refuse(HTTPStatus.METHOD_NOT_ALLOWED, "GET only here", allow="GET")
            return self.refuse(HTTPStatus.NOT_FOUND, f"nothing at {self.route}: post drawings to {GUESS_PATH}")
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            return self.refuse(HTTPStatus.LENGTH_REQUIRED, "give the drawing's size in Content-Length")
        if int(length) > MAX_BODY_BYTES:
            self.refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a drawing of {length} bytes; give at most {MAX_BODY_BYTES}")
            return self.discard(int(length))
        if not self.server.game.turns.acquire(timeout=WAIT_SECONDS):
            return self.refuse(HTTPStatus.SERVICE_UNAVAILABLE, "too busy; try again")
        try:
            guesses = self.server.game.guess(self.rfile.read(int(length)))
        except UserError as e:
            return self.refuse(HTTPStatus.BAD_REQUEST, str(e))
        finally:
            self.server.game.turns.release()
        self.send(HTTPStatus.OK, strict_json.dumps({"guesses": guesses}).encode(), "application/json")

    def __getattr__(self, name: str):
        """Every other method (do_PUT, do_DELETE, do_HEAD, ...) is refused with 405, not the server's 501."""
        if name.startswith("do_"):
            return lambda: self.refuse(HTTPStatus.METHOD_NOT_ALLOWED, f"{name[3:]} is not served here",
                                       allow="POST" if self.route == GUESS_PATH else "GET")
        raise AttributeError(name)

    def discard(self, length: int) -> None:
        """Read and drop up to DISCARD_BYTES of a refused body, a block at a time, so that a client still sending it
        reads the answer rather than a reset connection."""
        left = min(length, DISCARD_BYTES)
        while left > 0 and (block := self.rfile.read(min(left, 1 << 16))):
            left -= len(block)

    def refuse(self, status: HTTPStatus, message: str, allow: str | None = None) -> None:
        self.close_connection = True  # an unread body must not be taken for the next request
        self.send(status, strict_json.dumps({"error": message}).encode(), "application/json", allow)

    def send(self, status: HTTPStatus, body: bytes, kind: str, allow: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # a line per request would bury the one that says where the page is


def play(experiment: Location, host: str, port: int) -> int:
    """Serve the page until Ctrl-C."""
    game = Game.load(experiment)
    try:
        server = PlayServer((host, port), game)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"--port {port}: another program listens there; give another --port (0: any free one)") \
                from None
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    if not is_loopback(host):
        print(f"tune_search.py: warning: --host {host} serves the page to other machines too, to anyone who can "
              "reach this one (there is no login)", file=sys.stderr)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    try:  # from the line that names Ctrl-C on, Ctrl-C ends with the line that serves it again
        print(f"Draw at http://{shown}:{bound_port}/ ({len(game.model.classes)} classes, from {experiment}); "
              "Ctrl-C stops", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        again = f"python tune_search.py play {shlex.quote(str(experiment))} --host {host} --port {bound_port}"
        print(f"stopped; to serve it again: {again}", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, ValueError):
        return False
