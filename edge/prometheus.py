"""A Prometheus text-format endpoint (`GET /metrics`) served by the standard library in a thread.

No client library: the device install stays small, and the handful of counters, gauges and
histograms the daemon exposes fit in this module. Off by default and bound to 127.0.0.1 unless
configured, because the numbers tell an observer when people come and go.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler

from edge.http_server import BackgroundHTTPServer

log = logging.getLogger("edge.prometheus")

# Seconds; from a fast desktop frame (a few ms) to a slow Raspberry Pi frame with several faces.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for k, v in sorted(labels.items()))
    return "{" + ",".join(escaped) + "}"


class Histogram:
    """Cumulative-bucket histogram per label value (thread-safe), as Prometheus expects it."""

    def __init__(self, name: str, help_text: str, label: str, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.label = name, help_text, label
        self.buckets = tuple(sorted(buckets))
        self._lock = threading.Lock()
        self._series: dict[str, tuple[list[int], list[float]]] = {}  # value -> (bucket counts, [sum, count])

    def observe(self, label_value: str, seconds: float) -> None:
        with self._lock:
            counts, totals = self._series.setdefault(label_value, ([0] * len(self.buckets), [0.0, 0.0]))
            for i, bound in enumerate(self.buckets):
                if seconds <= bound:
                    counts[i] += 1
            totals[0] += seconds
            totals[1] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for value, (counts, (total, count)) in sorted(self._series.items()):
                for bound, n in zip(self.buckets, counts, strict=True):
                    lines.append(f"{self.name}_bucket{_labels({self.label: value, 'le': _number(bound)})} {n}")
                lines.append(f"{self.name}_bucket{_labels({self.label: value, 'le': '+Inf'})} {int(count)}")
                lines.append(f"{self.name}_sum{_labels({self.label: value})} {_number(total)}")
                lines.append(f"{self.name}_count{_labels({self.label: value})} {int(count)}")
        return lines


def metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> list[str]:
    """One counter or gauge family in text format."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples]
    return lines


class MetricsServer:
    """Serves `render()` at /metrics from a daemon thread until `stop()`."""

    def __init__(self, bind: str, port: int, render: Callable[[], str]) -> None:
        self.render = render

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                try:
                    body = render().encode()
                except Exception:
                    log.exception("metrics: rendering failed")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("metrics: " + format, *args)

        self._server = BackgroundHTTPServer("metrics.port", bind, port, Handler, "metrics")
        self.port = self._server.port

    def start(self) -> None:
        self._server.start()
        log.info("metrics on http://%s:%d/metrics", self._server.host, self.port)

    def stop(self) -> None:
        self._server.stop()
