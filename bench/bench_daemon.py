"""Door-daemon latency, memory and idle CPU, measured on the real pipeline.

Latency: from the first camera frame that shows an enrolled face to (a) the relay energized and
(b) the MQTT "recognized" event received by a subscriber, with the configured K-of-N voting. The
camera is a 640x480 source at --fps that shows an empty hallway photo until the face is switched in.
Memory and idle CPU are measured on the daemon as its own process (`python -m edge.daemon`, an image
folder camera at --fps, 640x480): resident memory (VmRSS, and the peak VmHWM) while it recognizes a
face in every frame; CPU time over wall time while the camera shows an unchanging empty scene, with the
motion gate on (shipped default) and off (every frame analysed).

    python bench/bench_daemon.py --runs 25
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.config import Config, config_from_dict  # noqa: E402
from edge.daemon import Daemon, default_recognizer, model_id_of  # noqa: E402
from edge.events import Topics  # noqa: E402
from edge.images import load_image  # noqa: E402

SHARED = REPO.parent / "shared" / "faces"


def camera_frame(image: np.ndarray, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """The photo letterboxed into a camera-sized frame."""
    width, height = size
    scale = min(width / image.shape[1], height / image.shape[0])
    resized = cv2.resize(image, (int(image.shape[1] * scale), int(image.shape[0] * scale)))
    frame = np.full((height, width, 3), 60, np.uint8)
    y, x = (height - resized.shape[0]) // 2, (width - resized.shape[1]) // 2
    frame[y:y + resized.shape[0], x:x + resized.shape[1]] = resized
    return frame


class SwitchSource:
    """A paced camera that shows `empty` until `show_face` is set; records when the face first went out."""

    name = "bench"

    def __init__(self, empty: np.ndarray, face: np.ndarray, fps: float) -> None:
        self.empty, self.face, self.fps = empty, face, fps
        self.show_face = threading.Event()
        self.first_face_at: float | None = None
        self._next = 0.0

    def open(self) -> None:
        self._next = time.monotonic()

    def read(self) -> np.ndarray:
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + 1 / self.fps, time.monotonic())
        if self.show_face.is_set():
            if self.first_face_at is None:
                self.first_face_at = time.monotonic()
            return self.face.copy()
        # A little sensor noise, as a real camera has: the motion gate must not mistake it for motion.
        noise = np.random.default_rng().integers(-2, 3, self.empty.shape, dtype=np.int16)
        return np.clip(self.empty.astype(np.int16) + noise, 0, 255).astype(np.uint8)

    def close(self) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_broker(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def photos() -> tuple[Path, Path, Path]:
    """(enroll, probe of the same person, empty scene)."""
    obama = SHARED / "people" / "Barack_Obama"
    if obama.is_dir():
        files = sorted(obama.glob("*.jpg"))
        return files[0], files[1], SHARED / "noface" / "davisking__horses.jpg"
    cache = Path(os.environ.get("EDGE_FACE_CACHE", Path.home() / ".cache" / "edge-face"))
    cache = cache / "face_recognition_test_images"
    if (cache / "obama.jpg").is_file():
        return cache / "obama.jpg", cache / "obama2.jpg", cache / "biden.jpg"
    raise SystemExit(f"no face photos: need {SHARED} or {cache} (run the tests once)")


def proc_memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values["VmRSS"], values["VmHWM"]


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_daemon_process(config: Config, work: Path, camera: dict, seconds: float,
                       warmup_s: float = 8.0) -> tuple[float, float, float, dict]:
    """Run `python -m edge.daemon` on `camera`; returns (CPU % of one core, RSS MB, peak RSS MB, last health)."""
    import yaml

    data = _as_dict(config)
    data["camera"].update(camera)
    data["health"]["interval_s"] = 1.0
    path = work / "daemon.yaml"
    path.write_text(yaml.safe_dump(data))
    health: list[dict] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda _c, _u, m: health.append(json.loads(m.payload))
    watcher.connect(config.mqtt.host, config.mqtt.port)
    watcher.subscribe(Topics(config.mqtt.topic_prefix, config.device_id).health, qos=1)
    watcher.loop_start()
    proc = subprocess.Popen([sys.executable, "-m", "edge.daemon", "--config", str(path)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(warmup_s)
        t0, c0, h0 = time.monotonic(), proc_cpu_s(proc.pid), len(health)
        time.sleep(seconds)
        cpu = 100 * (proc_cpu_s(proc.pid) - c0) / (time.monotonic() - t0)
        rss, hwm = proc_memory(proc.pid)
        analysed = {}
        if h0 and len(health) > h0:
            analysed = {"frames_analysed": health[-1]["frames_analysed"] - health[h0 - 1]["frames_analysed"]}
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)
        watcher.loop_stop()
    return cpu, rss, hwm, analysed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config.yaml"))
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--fps", type=float, default=15.0, help="camera frame rate")
    parser.add_argument("--idle-s", type=float, default=20.0, help="seconds of empty scene per idle CPU figure")
    parser.add_argument("--threads", type=int, default=None, help="override model.threads")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    from gpiozero.pins.mock import MockFactory

    from edge.config import load_config
    from edge.gallery import Gallery

    base = load_config(args.config)
    work = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    broker, port = start_broker(work)
    enroll, probe, empty = photos()
    config: Config = replace(
        base,
        gallery=replace(base.gallery, path=str(work / "gallery.db")),
        queue=replace(base.queue, path=str(work / "events.db")),
        mqtt=replace(base.mqtt, host="127.0.0.1", port=port, topic_prefix="bench"),
        relay=replace(base.relay, mock="always", unlock_s=0.5),
        decision=replace(base.decision, cooldown_s=0.5),
        health=replace(base.health, interval_s=3600.0),
        model=replace(base.model, threads=args.threads or base.model.threads),
    )
    config = config_from_dict(_as_dict(config))  # re-validate the overrides

    recognizer = default_recognizer(config)
    faces = recognizer.recognize(load_image(enroll))
    gallery = Gallery(config.gallery.path, model_id_of(recognizer))
    gallery.add("enrolled", np.asarray(faces[0].embedding, np.float32)[None, :],
                [hashlib.sha256(enroll.read_bytes()).hexdigest()], [str(enroll)])
    gallery.close()

    source = SwitchSource(camera_frame(load_image(empty)), camera_frame(load_image(probe)), args.fps)
    timings = []
    for image in [source.face] * 11 + [source.empty] * 11:
        started = time.monotonic()
        recognizer.recognize(image)
        timings.append((time.monotonic() - started) * 1000)
    face_ms, empty_ms = statistics.median(timings[1:11]), statistics.median(timings[12:])
    del recognizer
    received: dict[str, float] = {}
    got = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub")

    def on_message(_c, _u, message) -> None:
        received[json.loads(message.payload)["id"]] = time.monotonic()
        got.set()

    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe(Topics("bench", config.device_id).recognized, qos=1)
    sub.loop_start()

    pins = MockFactory()
    # The latency runs show a still photo, which liveness (rightly) never lets in, so they measure the
    # identity path with liveness off; docs/liveness.md has the liveness decision times. Memory and idle
    # CPU below run the config as shipped, liveness models loaded.
    identity_only = replace(config, liveness=replace(config.liveness, mode="off"))
    daemon = Daemon(identity_only, default_recognizer, pin_factory=pins, source_factory=lambda: source)
    energized: list[float] = []
    relay_hook = daemon.relay.on_change  # type: ignore[union-attr]

    def on_change(unlocked: bool, reason: str) -> None:
        if unlocked:
            energized.append(time.monotonic())
        if relay_hook:
            relay_hook(unlocked, reason)

    daemon.relay.on_change = on_change  # type: ignore[union-attr]
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    time.sleep(3.0)

    relay_ms, mqtt_ms, failures = [], [], 0
    for _ in range(args.runs):
        source.first_face_at = None
        energized.clear()
        got.clear()
        before = set(received)
        source.show_face.set()
        ok = got.wait(10.0)
        source.show_face.clear()
        new = [t for k, t in received.items() if k not in before]
        if not ok or not energized or not new or source.first_face_at is None:
            failures += 1
        else:
            relay_ms.append((energized[0] - source.first_face_at) * 1000)
            mqtt_ms.append((min(new) - source.first_face_at) * 1000)
        time.sleep(config.decision.window_s + config.decision.cooldown_s + 0.5)  # old votes expire
    analyse_ms = daemon.health()["analyse_ms_median"]
    daemon.request_stop("bench done")
    runner.join(timeout=20)
    sub.loop_stop()

    # The daemon as its own process: memory while recognizing, CPU with an empty scene.
    face_dir, empty_dir = work / "face", work / "empty"
    for folder, photo in ((face_dir, probe), (empty_dir, empty)):
        folder.mkdir()
        (folder / photo.name).symlink_to(photo.resolve())
    camera = {"loop": True, "fps": args.fps, "width": 640, "height": 480, "image_hold_s": 3600.0}
    _, rss, hwm, _ = run_daemon_process(config, work, {**camera, "source": str(face_dir)}, 15.0)
    cpu_gated, _, _, log_gated = run_daemon_process(config, work, {**camera, "source": str(empty_dir)}, args.idle_s)
    cpu_ungated, _, _, log_ungated = run_daemon_process(
        config, work, {**camera, "source": str(empty_dir), "idle_check_s": 0.001}, args.idle_s)
    analysed_gated, analysed_ungated = log_gated.get("frames_analysed"), log_ungated.get("frames_analysed")
    broker.terminate()
    shutil.rmtree(work, ignore_errors=True)

    def summary(values: list[float]) -> str:
        if not values:
            return "no successful run"
        q = statistics.quantiles(values, n=10) if len(values) >= 2 else values
        return (f"median {statistics.median(values):.0f} ms, p90 {q[-1]:.0f} ms, "
                f"min {min(values):.0f}, max {max(values):.0f}")

    cpu_name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu_name = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    result = {
        "machine": f"{cpu_name}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "model": config.model.path, "threads": config.model.threads, "fps": args.fps,
        "voting": f"K={config.decision.votes_k} of N={config.decision.votes_n} within {config.decision.window_s} s",
        "runs": args.runs, "failures": failures, "analyse_ms_median": analyse_ms,
        "face_frame_ms": round(face_ms, 1), "empty_frame_ms": round(empty_ms, 1),
        "relay_ms": relay_ms, "mqtt_ms": mqtt_ms, "rss_mb": round(rss, 1), "peak_rss_mb": round(hwm, 1),
        "idle_cpu_percent_gated": round(cpu_gated, 1), "idle_frames_analysed_gated": analysed_gated,
        "idle_cpu_percent_ungated": round(cpu_ungated, 1), "idle_frames_analysed_ungated": analysed_ungated,
        "idle_s": args.idle_s,
    }
    print(f"machine: {result['machine']}")
    print(f"model {config.model.path}, {config.model.threads} thread(s), camera {args.fps} fps 640x480, "
          f"voting {result['voting']}")
    print(f"recognize() on one 640x480 frame: {face_ms:.0f} ms with the face, {empty_ms:.0f} ms empty (median of 10)")
    print(f"first face frame -> relay energized:  {summary(relay_ms)}  ({len(relay_ms)} runs, {failures} failed; "
          f"liveness off for these runs)")
    print(f"first face frame -> MQTT event recv:  {summary(mqtt_ms)}")
    print(f"daemon process resident memory while recognizing: {rss:.0f} MB (peak {hwm:.0f} MB; liveness "
          f"{config.liveness.mode})")
    print(f"daemon process CPU, empty scene, motion gate on:  {cpu_gated:.1f}% of one core "
          f"({analysed_gated} frames analysed, {args.idle_s:.0f} s at {args.fps:.0f} fps)")
    print(f"daemon process CPU, empty scene, motion gate off: {cpu_ungated:.1f}% of one core "
          f"({analysed_ungated} frames analysed, {args.idle_s:.0f} s at {args.fps:.0f} fps)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if failures == 0 else 1


def _as_dict(config: Config) -> dict:
    import dataclasses

    return dataclasses.asdict(config)


if __name__ == "__main__":
    sys.exit(main())
