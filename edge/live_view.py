"""A local live-view page: the camera stream with face boxes and names, the last events and health.

Standard library HTTP in a thread, like the metrics endpoint, so the device install gains no
dependency. Off by default, bound to 127.0.0.1 unless configured, and every request (the page
included) needs the access token, because the stream shows who is at the door. Frames stay in
memory: the newest analysed frame is kept and JPEG-encoded only while someone watches, at most
`max_fps` times a second per viewer; nothing is written to disk.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import cv2
import numpy as np

from edge.http_server import BackgroundHTTPServer

log = logging.getLogger("edge.live_view")

BOUNDARY = "edgefaceframe"
KNOWN = (40, 200, 40)  # RGB: green box for a recognized person
UNKNOWN = (230, 60, 40)  # RGB: red box for an unknown face


def draw_faces(image: np.ndarray, faces: Iterable[tuple[Sequence[float], str | None, float]]) -> np.ndarray:
    """A copy of the RGB frame with a box and a label per face (name or 'unknown', and the distance)."""
    out = np.ascontiguousarray(image).copy()
    scale = max(out.shape[1] / 640, 0.5)
    thick = max(int(round(2 * scale)), 1)
    for box, name, distance in faces:
        x, y, w, h = (int(round(float(v))) for v in box)
        color = KNOWN if name else UNKNOWN
        cv2.rectangle(out, (x, y), (x + w, y + h), color, thick)
        label = f"{name or 'unknown'} {distance:.2f}" if np.isfinite(distance) else (name or "unknown")
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, thick)
        top = max(y - th - base - 4, 0)
        cv2.rectangle(out, (x, top), (x + tw + 6, top + th + base + 4), color, -1)
        cv2.putText(out, label, (x + 3, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (255, 255, 255),
                    thick, cv2.LINE_AA)
    return out


class FrameStore:
    """The newest analysed frame and its faces; encodes it to JPEG once per new frame, on demand."""

    def __init__(self, quality: int = 80) -> None:
        self.quality = quality
        self._cond = threading.Condition()
        self._image: np.ndarray | None = None
        self._faces: list[tuple[tuple[float, ...], str | None, float]] = []
        self._seq = 0
        self._jpeg: tuple[int, bytes] | None = None

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of the newest frame (what a viewer's JPEG decodes to), None before the first."""
        image = self._image
        return None if image is None else tuple(image.shape)

    def put(self, image: np.ndarray, faces: Iterable[tuple[Sequence[float], str | None, float]]) -> None:
        """Called by the camera loop: keep a reference only (drawing and encoding wait for a viewer)."""
        with self._cond:
            self._image = image
            self._faces = [(tuple(float(v) for v in box), name, float(distance)) for box, name, distance in faces]
            self._seq += 1
            self._cond.notify_all()

    def wait_newer(self, seq: int, timeout: float) -> int:
        """Block until a frame newer than `seq` arrives (or the timeout); returns the current seq."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > seq, timeout=timeout)
            return self._seq

    def jpeg(self) -> tuple[int, bytes] | None:
        """(seq, JPEG bytes) of the newest frame with faces drawn, or None before the first frame."""
        with self._cond:
            if self._image is None:
                return None
            if self._jpeg is not None and self._jpeg[0] == self._seq:
                return self._jpeg
            seq, image, faces = self._seq, self._image, list(self._faces)
        drawn = draw_faces(image, faces)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return None
        with self._cond:
            self._jpeg = (seq, buf.tobytes())
            return self._jpeg


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: sans-serif; margin: 12px; background: #f4f4f4; color: #222; }}
main {{ display: flex; gap: 16px; flex-wrap: wrap; }}
#view img {{ max-width: 640px; width: 100%; background: #000; border: 1px solid #888; }}
table {{ border-collapse: collapse; font-size: 14px; }}
td, th {{ border-bottom: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
.recognized {{ color: #176117; }} .unknown, .denied {{ color: #a02010; }}
</style></head>
<body>
<h1>{title}</h1>
<main>
<section id="view"><h2>Camera</h2><img id="stream" alt="camera stream" src="{frame_url}"></section>
<div>
<section id="events"><h2>Last events</h2>
<table><thead><tr><th>time</th><th>event</th><th>person</th><th>detail</th></tr></thead>
<tbody id="event-rows">{rows}</tbody></table></section>
<section id="health"><h2>Health</h2><table><tbody id="health-rows">{health}</tbody></table></section>
</div>
</main>
<script>
const token = {token_js};
const q = "?token=" + encodeURIComponent(token);
function esc(s) {{ return String(s).replace(/[&<>"']/g, c => "&#" + c.charCodeAt(0) + ";"); }}
function row(e) {{
  const detail = e.detail !== undefined ? e.detail : e.distance !== undefined ? "distance " + e.distance :
    e.lock !== undefined ? e.lock + " (" + (e.reason || "") + ")" : "";
  return "<tr class='" + esc(e.type) + "'><td>" + esc(e.time || "") + "</td><td>" + esc(e.type) + "</td><td>" +
    esc(e.person || "") + "</td><td>" + esc(detail) + "</td></tr>";
}}
async function poll() {{
  try {{
    const r = await fetch("events.json" + q, {{cache: "no-store"}});
    if (r.ok) {{
      const data = await r.json();
      document.getElementById("event-rows").innerHTML = data.events.map(row).join("");
      document.getElementById("health-rows").innerHTML = Object.entries(data.health)
        .map(([k, v]) => "<tr><th>" + esc(k) + "</th><td>" + esc(v) + "</td></tr>").join("");
    }}
  }} catch (err) {{ /* the daemon restarted or the network dropped: try again next time */ }}
}}
// The first frame arrives as a still (so the page finishes loading), then the stream replaces it.
window.addEventListener("load", () => {{
  document.getElementById("stream").src = "stream.mjpg" + q;
  setInterval(poll, 2000);
}});
</script>
</body></html>
"""


def _event_row(event: dict[str, Any]) -> str:
    if "detail" in event:
        detail = str(event["detail"])
    elif "distance" in event:
        detail = f"distance {event['distance']}"
    elif "lock" in event:
        detail = f"{event['lock']} ({event.get('reason', '')})"
    else:
        detail = ""
    cells = (event.get("time", ""), event.get("type", ""), event.get("person") or "", detail)
    return (f"<tr class=\"{html.escape(str(event.get('type', '')))}\">"
            + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")


class LiveViewServer:
    """Serves the page, /stream.mjpg, /frame.jpg and /events.json from a daemon thread until `stop()`."""

    def __init__(self, bind: str, port: int, token: str, frames: FrameStore,
                 events: Callable[[], list[dict[str, Any]]], health: Callable[[], dict[str, Any]],
                 title: str = "door", max_fps: float = 5.0) -> None:
        self.frames = frames
        self._stopping = threading.Event()
        expected = token.encode()
        stopping = self._stopping
        min_interval = 1.0 / max_fps

        class Handler(BaseHTTPRequestHandler):
            def _authorized(self, query: dict[str, list[str]]) -> bool:
                given = query.get("token", [""])[0]
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Bearer "):
                    given = auth[len("Bearer "):].strip()
                return hmac.compare_digest(given.encode(), expected)

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                url = urlsplit(self.path)
                if url.path not in ("/", "/stream.mjpg", "/frame.jpg", "/events.json"):
                    self.send_error(404)
                    return
                if not self._authorized(parse_qs(url.query)):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Bearer realm="live view"')
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    body = b"a valid token is required (?token= or Authorization: Bearer)\n"
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                try:
                    if url.path == "/":
                        self._page(parse_qs(url.query).get("token", [""])[0])
                    elif url.path == "/events.json":
                        body = json.dumps({"events": events(), "health": health()}, default=str).encode()
                        self._send(200, "application/json", body)
                    elif url.path == "/frame.jpg":
                        current = frames.jpeg()
                        if current is None:
                            self.send_error(503, "no frame analysed yet")
                        else:
                            self._send(200, "image/jpeg", current[1])
                    else:
                        self._stream()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the viewer went away

            def _page(self, token_text: str) -> None:
                rows = "".join(_event_row(e) for e in events())
                health_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                                      for k, v in health().items())
                body = PAGE.format(title=html.escape(f"Live view: {title}"), rows=rows, health=health_rows,
                                   frame_url=html.escape("frame.jpg?token=" + quote(token_text)),
                                   token_js=json.dumps(token_text).replace("<", "\\u003c")).encode()
                self._send(200, "text/html; charset=utf-8", body)

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                sent = -1
                while not stopping.is_set():
                    started = time.monotonic()
                    frames.wait_newer(sent, timeout=1.0)
                    current = frames.jpeg()
                    if current is None or current[0] == sent:
                        continue
                    sent, jpeg = current
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                     f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                    self.wfile.flush()
                    pause = min_interval - (time.monotonic() - started)
                    if pause > 0:
                        stopping.wait(pause)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("live view: " + format, *args)

        self._server = BackgroundHTTPServer("live_view.port", bind, port, Handler, "live-view")
        self.port = self._server.port

    def start(self) -> None:
        self._server.start()
        log.info("live view on http://%s:%d/ (token required)", self._server.host, self.port)

    def stop(self) -> None:
        """Ends open streams too, so no viewer keeps a thread (or the last frame) alive."""
        self._stopping.set()
        self._server.stop()
