"""``connectome view``'s HTTP server: the export and the neuroglancer client on one port.

* ``/v/connectome/...`` - the neuroglancer client bundled in the ``neuroglancer`` package
  (``/`` redirects there). That bundle is the Python-integration build: it takes its token
  from the ``/v/<token>/`` path and talks to ``/events/<token>`` and ``/state/<token>``; we
  answer those minimally (an idle event stream, state posts acknowledged), so the client keeps
  the state it got from the URL and reports no lost connection.
* ``/data/<layer>/...`` - files of the export, with CORS for the viewer's own origin only (and
  the origins given with ``--cors``; ``--cors '*'`` allows any page to read them). A chunk that cloud-volume stored
  compressed (``<name>.gz`` / ``<name>.br``) is sent as ``<name>`` with ``Content-Encoding``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from connectome.errors import UserInputError

log = logging.getLogger(__name__)

TOKEN = "connectome"
DEFAULT_PORT = 8585
ENCODINGS = ((".gz", "gzip"), (".br", "br"))
MIME = {
    ".js": "application/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".wasm": "application/wasm",
    ".map": "application/json",
    ".json": "application/json",
}


def client_dir() -> Path:
    import neuroglancer

    d = Path(neuroglancer.__file__).parent / "static" / "client"
    if not (d / "index.html").is_file():
        raise UserInputError(f"the neuroglancer package at {d.parent.parent} has no bundled client (static/client)")
    return d


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end); None if absent or
    not a single byte range."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if first == "":
            n = int(last)
            return max(size - n, 0), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    return start, min(end, size - 1)


class _Handler(BaseHTTPRequestHandler):
    server_version = "connectome-view"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet; -vv shows requests
        log.debug("%s %s", self.address_string(), fmt % args)

    # -------------------------------------------------------------- helpers
    def _cors(self):
        allowed = self.server.cors_origins
        origin = self.headers.get("Origin")
        if "*" in allowed:
            self.send_header("Access-Control-Allow-Origin", "*")
        elif origin and origin in allowed:  # other origins get no CORS grant: their pages cannot read us
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Vary", "Origin")
        self.send_header("Access-Control-Allow-Headers", "x-requested-with, range, content-type")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Access-Control-Expose-Headers", "content-range, content-encoding")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS")

    def _send(self, code: int, body: bytes = b"", ctype: str = "text/plain", headers: dict | None = None):
        self.send_response(code)
        self._cors()
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _file(self, root: Path, rel: str):
        root = root.resolve()
        target = (root / rel).resolve()
        if root != target and root not in target.parents:
            return self._send(404, b"not found")
        if target.is_dir():
            target = target / "index.html"
        headers = {"Cache-Control": "no-cache"}
        if not target.is_file():
            for suffix, encoding in ENCODINGS:
                packed = target.with_name(target.name + suffix)
                if packed.is_file():
                    target, headers["Content-Encoding"] = packed, encoding
                    break
            else:
                return self._send(404, b"not found")
        ext = os.path.splitext(rel)[1]
        ctype = MIME.get(ext, "application/json" if target.name == "info" else "application/octet-stream")
        data = target.read_bytes()
        byte_range = _parse_range(self.headers.get("Range"), len(data))
        if byte_range is not None and "Content-Encoding" not in headers:  # sharded files are read by range
            start, end = byte_range
            if start >= len(data) or start > end:
                return self._send(416, b"", headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start : end + 1], ctype, headers)
        return self._send(200, data, ctype, headers)

    # -------------------------------------------------------------- methods
    def do_OPTIONS(self):
        self.send_response(204)
        self._cors()
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = unquote(urlsplit(self.path).path)
        if path in ("/", "/v", f"/v/{TOKEN}"):
            return self._send(302, b"", headers={"Location": f"/v/{TOKEN}/"})
        if path.startswith(f"/v/{TOKEN}/"):
            return self._file(self.server.client_dir, path[len(f"/v/{TOKEN}/") :] or "index.html")
        if path.startswith("/data/"):
            return self._file(self.server.data_dir, path[len("/data/") :])
        if path.startswith(f"/events/{TOKEN}"):
            return self._events()
        return self._send(404, b"not found")

    def do_POST(self):
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if path == f"/state/{TOKEN}":
            try:
                generation = json.loads(body or b"{}").get("g", "")
            except ValueError:
                return self._send(400, b"bad state")
            return self._send(200, json.dumps({"g": generation}).encode(), "application/json")
        if path.startswith(("/action/", "/credentials/")):
            return self._send(200, b"", "application/json")
        return self._send(404, b"not found")

    def _events(self):
        """An idle server-sent-event stream (the client's 'connected to Python' channel)."""
        self.close_connection = True
        self.send_response(200)
        self._cors()
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            while not self.server.stopping.is_set():
                self.wfile.write(b": keep-alive\n\n")
                self.wfile.flush()
                self.server.stopping.wait(10)
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # set by ViewServer right after binding; read by the handlers
    client_dir: Path
    data_dir: Path
    stopping: threading.Event
    cors_origins: frozenset[str]


class _Server6(_Server):
    address_family = socket.AF_INET6


class ViewServer:
    """The running server; ``url`` is its base (``http://host:port``)."""

    def __init__(self, data_dir: Path, bind: str = "127.0.0.1", port: int = DEFAULT_PORT, cors: tuple[str, ...] = ()):
        """``cors``: origins (``scheme://host:port``, or ``*``) whose pages may read the data besides
        the viewer's own (``connectome view --cors``); by default only the viewer's own origin."""
        if not 0 <= int(port) <= 65535:
            raise UserInputError(f"--port: expected 0..65535, got {port}")
        cls = _Server6 if ":" in bind else _Server
        try:
            self.httpd = cls((bind, int(port)), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserInputError(
                    f"--port {port}: {bind}:{port} is already in use; choose another port (--port 0 picks a free one)"
                ) from None
            raise UserInputError(f"--bind {bind} --port {port}: cannot listen ({exc.strerror or exc})") from None
        self.httpd.client_dir = client_dir()
        self.httpd.data_dir = Path(data_dir)
        self.httpd.stopping = threading.Event()
        self.bind = bind
        self.port = self.httpd.server_address[1]
        host = bind
        if bind in ("", "0.0.0.0", "::"):
            host = socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        self.url = f"http://{host}:{self.port}"
        own = {self.url, f"http://127.0.0.1:{self.port}", f"http://localhost:{self.port}", f"http://[::1]:{self.port}"}
        self.httpd.cors_origins = frozenset(own | {c.rstrip("/") for c in cors})
        self._thread: threading.Thread | None = None

    @property
    def client_url(self) -> str:
        return f"{self.url}/v/{TOKEN}/"

    @property
    def data_url(self) -> str:
        return f"{self.url}/data"

    def start(self) -> "ViewServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="connectome-view", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.stopping.set()
        if self._thread is not None:  # serve_forever runs in our thread: stop it
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
