"""The small HTTP servers of the daemon (metrics, live view) run the same way: a stdlib
ThreadingHTTPServer on a daemon thread, with a port that cannot be bound reported as a config
error naming the key."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edge.errors import ConfigError


class BackgroundHTTPServer:
    """Serves `handler` on bind:port from its own thread once started."""

    def __init__(self, key: str, bind: str, port: int, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        try:
            self.httpd = ThreadingHTTPServer((bind, port), handler)
        except OSError as exc:
            raise ConfigError(f"{key}: cannot listen on {bind}:{port} ({exc.strerror})") from None
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[0], self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
            self._thread.join(timeout=5.0)
        self.httpd.server_close()
