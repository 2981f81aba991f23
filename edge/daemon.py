"""The door daemon: camera -> recognizer -> decision -> relay + MQTT events, supervised by systemd.

`python -m edge.daemon --config config.yaml` (console script `edge-face-daemon`). `--demo` runs it on
a fresh machine: a looping folder of real face photos, a demo gallery with one person enrolled,
MQTT to the configured broker when reachable (events queued on disk and logged otherwise) and
gpiozero's mock pins when no GPIO exists.

The recognizer is injected (`recognizer_factory(config)`), so the decision/MQTT/relay/command
parts run and are tested without models, and the same daemon runs the real pipeline.
SIGTERM/SIGINT: lock, publish `offline`, keep the queue on disk, exit 0. SIGHUP: re-read the config
and rebuild the recognizer (gallery, model, decision and unlock settings; other sections need a restart).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from edge import live_view, prometheus, sd_notify
from edge.access_log import AccessLog, entry_from_event
from edge.camera import Camera, FrameSource, make_source
from edge.commands import CommandRejected, CommandVerifier
from edge.config import Config, load_config
from edge.decision import Decision, DecisionEngine, Observation
from edge.errors import ConfigError, EdgeError
from edge.event_queue import EventQueue
from edge.events import (
    Topics,
    base_event,
    door_event,
    face_event,
    prompt_event,
    spoof_event,
    status_event,
    utc_now_iso,
)
from edge.ha_discovery import HaLockCommands, ha_command_topic, publish_discovery
from edge.liveness_monitor import LivenessMonitor, Outcome
from edge.mqtt_client import MqttLink
from edge.relay import DoorContact, DoorRelay, choose_pin_factory
from edge.unknown_faces import UnknownFaceStore

log = logging.getLogger("edge.daemon")


class RecognitionLike(Protocol):
    box: tuple[float, float, float, float]
    name: str | None
    distance: float


class RecognizerLike(Protocol):
    def recognize(self, image: np.ndarray) -> list[Any]: ...


RecognizerFactory = Callable[[Config], RecognizerLike]
LandmarkerFactory = Callable[[Config], Any]


def default_recognizer(config: Config) -> RecognizerLike:
    """The real pipeline: MTCNN + FaceNet on LiteRT + the SQLite gallery."""
    from edge.recognizer import Recognizer

    return Recognizer.from_paths(config.model.path, config.gallery.path, mtcnn_dir=config.model.mtcnn_dir,
                                 threads=config.model.threads, min_face_size=config.model.min_face_size,
                                 threshold=config.model.threshold)


def default_landmarker(config: Config) -> Any:
    """The face mesh (and iris) models the liveness checks read."""
    from edge.landmarks import FaceLandmarker

    return FaceLandmarker(config.liveness.models_dir, threads=config.liveness.threads, iris=config.liveness.iris)


def model_id_of(recognizer: Any) -> str:
    embedder = getattr(recognizer, "embedder", None)
    return str(getattr(embedder, "model_id", None) or getattr(recognizer, "model_id", None) or "unknown")


class MotionGate:
    """Skips detection while the view is unchanged and the last analysed frame had no face."""

    def __init__(self, threshold: float, idle_check_s: float) -> None:
        self.threshold = threshold
        self.idle_check_s = idle_check_s
        self._reference: np.ndarray | None = None
        self._last = -1e9

    @staticmethod
    def thumbnail(image: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return cv2.resize(grey, (64, 48), interpolation=cv2.INTER_AREA).astype(np.int16)

    def should_analyse(self, image: np.ndarray, now: float, had_faces: bool) -> bool:
        thumb = self.thumbnail(image)
        changed = self._reference is None or float(np.abs(thumb - self._reference).mean()) > self.threshold
        if changed or had_faces or now - self._last >= self.idle_check_s:
            self._reference = thumb
            self._last = now
            return True
        return False


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Daemon:
    """Owns the camera thread, the MQTT link, the relay and the decision engine."""

    def __init__(self, config: Config, recognizer_factory: RecognizerFactory = default_recognizer, *,
                 config_path: str | Path | None = None, pin_factory: Any = None,
                 source_factory: Callable[[], FrameSource] | None = None, echo: bool = False,
                 landmarker_factory: LandmarkerFactory = default_landmarker) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path else None
        self.recognizer_factory = recognizer_factory
        self.echo = echo
        self.topics = Topics(config.mqtt.topic_prefix, config.device_id)
        self.engine = DecisionEngine.from_config(config.decision)
        self.gate = MotionGate(config.camera.motion_threshold, config.camera.idle_check_s)
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=200)
        self.stats = {"frames_analysed": 0, "frames_skipped": 0, "recognize_errors": 0, "unlocks": 0,
                      "commands_accepted": 0, "commands_rejected": 0}
        self._analyse_ms: deque[float] = deque(maxlen=50)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._reload_gallery = threading.Event()
        self._had_faces = False
        self._door_state = "unknown"
        self._started = time.monotonic()
        self._cpu_mark = (time.monotonic(), sum(os.times()[:2]))

        # First: a taken port refuses the start before any file or connection is opened.
        self.metrics_server: prometheus.MetricsServer | None = None
        if config.metrics.enabled:
            self.metrics_server = prometheus.MetricsServer(config.metrics.bind, config.metrics.port,
                                                           self.render_metrics)
        self.live_frames: live_view.FrameStore | None = None
        self.live_view_server: live_view.LiveViewServer | None = None
        if config.live_view.enabled:
            self.live_frames = live_view.FrameStore()
            self.live_view_server = live_view.LiveViewServer(
                config.live_view.bind, config.live_view.port, config.live_view_token(), self.live_frames,
                self.last_events, self.live_health, title=f"{config.device_id} / {config.camera.name}",
                max_fps=config.live_view.max_fps)
        self.queue = EventQueue(config.queue.path, config.queue.max_events)
        self.access_log: AccessLog | None = None
        if config.access_log.enabled:
            self.access_log = AccessLog(config.access_log.resolved_path(config.queue.path),
                                        config.access_log.max_days, config.access_log.max_rows)
        self.unknown_faces: UnknownFaceStore | None = None
        if config.unknown_faces.enabled:
            uf = config.unknown_faces
            self.unknown_faces = UnknownFaceStore(uf.resolved_path(config.queue.path), uf.max_days, uf.max_mb)
        self.events_by_kind: dict[str, int] = {}
        self._events_lock = threading.Lock()
        self.stage_seconds = prometheus.Histogram("edge_face_stage_seconds", "Time per pipeline stage "
                                                  "(detect, embed, match inside recognize; decide after it).",
                                                  "stage")
        self._last_frame: float | None = None
        self.verifier: CommandVerifier | None = None
        if config.commands.enabled:
            self.verifier = CommandVerifier(config.command_secret(), config.device_id, config.commands.max_age_s,
                                            config.commands.nonce_path, config.commands.max_unlock_s)
        self.mqtt = MqttLink(config.mqtt, config.device_id, self.queue,
                             on_command=self.handle_command if self.verifier else None)
        self.ha_lock: HaLockCommands | None = None
        self._setup_homeassistant()
        factory = pin_factory if pin_factory is not None else choose_pin_factory(config.relay.mock)
        self.relay: DoorRelay | None = None
        if config.relay.enabled:
            self.relay = DoorRelay(config.relay, pin_factory=factory, on_change=self._relay_changed)
        self.contact: DoorContact | None = None
        if config.door_contact.enabled:
            self.contact = DoorContact(config.door_contact, self._contact_changed, pin_factory=factory)
            self._door_state = self.contact.state
        self.recognizer = recognizer_factory(config)
        self.model_id = model_id_of(self.recognizer)
        # Liveness: the mesh models load here, so a missing or corrupt model refuses the start.
        self.liveness: LivenessMonitor | None = None
        self.prompter: Any = None
        self._held: dict[str, Decision] = {}  # unlock decisions waiting for their liveness check
        if config.liveness.mode != "off":
            self.liveness = LivenessMonitor.from_config(config.liveness, landmarker_factory(config))
            prompt = config.liveness.prompt
            if any(p is not None for p in (prompt.left_led_pin, prompt.right_led_pin, prompt.buzzer_pin)):
                from edge.challenge_prompt import ChallengePrompter

                self.prompter = ChallengePrompter(prompt, pin_factory=factory)
        else:
            log.warning("liveness.mode is off: a printed photo of an enrolled person opens the door")
        cam = config.camera
        self.camera = Camera(source_factory or (lambda: make_source(cam)), cam.retry_s, cam.retry_max_s,
                             on_status=self._camera_status)

    # --- outputs ---------------------------------------------------------------------------------------

    def emit(self, topic: str, event: dict[str, Any], retain: bool = False, durable: bool = True) -> None:
        """Log an event and hand it to MQTT (queued on disk when durable)."""
        self.recent_events.append(event)
        with self._events_lock:
            self.events_by_kind[event["type"]] = self.events_by_kind.get(event["type"], 0) + 1
        self._record(event)
        if event["type"] != "health":
            log.info("event %s %s", topic.rsplit("/", 1)[-1], {k: v for k, v in event.items() if k not in ("id",)})
        self.mqtt.publish(topic, event, retain=retain, durable=durable)

    def _record(self, event: dict[str, Any]) -> None:
        """Append a decision to the access log; a failing log is reported but never stops the door."""
        entry = entry_from_event(event) if self.access_log is not None else None
        if entry is None or self.access_log is None:
            return
        try:
            self.access_log.append(**entry)
        except Exception as exc:
            log.error("access log %s: could not record %s (%s)", self.access_log.path, entry["kind"], exc)

    def _status(self, state: str, detail: str = "", **fields: Any) -> None:
        self.emit(self.topics.status, status_event(self.config.device_id, self.config.camera.name, state, detail,
                                                   **fields))

    def _camera_status(self, state: str, detail: str) -> None:
        self._status(state, detail)

    def _door(self, reason: str) -> None:
        lock = "unlocked" if self.relay is not None and self.relay.unlocked else "locked"
        self.emit(self.topics.door, door_event(self.config.device_id, lock, self._door_state, reason), retain=True)

    def _relay_changed(self, unlocked: bool, reason: str) -> None:
        self._door(reason)

    def _contact_changed(self, state: str) -> None:
        if state == "held_open":
            log.warning("door held open longer than %.0f s", self.config.door_contact.held_open_s)
            self._door_state = "held_open"
        else:
            self._door_state = state
        self._door(f"door {state}")

    def _setup_homeassistant(self) -> None:
        """Discovery on every connect; the HA-only lock topic only when homeassistant.unlock_command is on."""
        ha = self.config.homeassistant
        if ha.enabled:
            self.mqtt.add_connect_hook(lambda client: publish_discovery(client, self.config))
        if ha.unlock_command:
            self.ha_lock = HaLockCommands(self._ha_unlock, self._ha_lock)
            self.mqtt.add_handler(ha_command_topic(self.topics), self.ha_lock.handle)

    def _ha_unlock(self) -> None:
        # Always the configured timed pulse: HA cannot hold the door open, only open it once.
        if self.relay is not None:
            self.relay.unlock(reason="home assistant")
            self.stats["unlocks"] += 1

    def _ha_lock(self) -> None:
        if self.relay is not None:
            self.relay.lock("home assistant")

    # --- commands ------------------------------------------------------------------------------------------

    def handle_command(self, raw: bytes) -> None:
        """Verify and run a remote command; anything wrong is logged, reported and ignored."""
        assert self.verifier is not None
        try:
            command = self.verifier.verify(raw)
        except CommandRejected as exc:
            self.stats["commands_rejected"] += 1
            log.warning("command rejected: %s", exc)
            self._status("command_rejected", str(exc))
            return
        self.stats["commands_accepted"] += 1
        log.info("command accepted: %s %s", command.name, command.args)
        if command.name == "unlock":
            if self.relay is not None:
                self.relay.unlock(command.args.get("duration_s"), reason="remote command")
                self.stats["unlocks"] += 1
            self._status("command_done", "unlock", nonce=command.nonce)
        elif command.name == "reload":
            self._reload_gallery.set()
            self._status("command_done", "reload", nonce=command.nonce)

    # --- lifecycle -------------------------------------------------------------------------------------------

    def request_stop(self, reason: str = "") -> None:
        """Lock first, then let the main loop wind down (safe from a signal handler)."""
        if self.relay is not None:
            self.relay.lock(reason or "stop")
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def _rebuild_recognizer(self, config: Config) -> bool:
        try:
            recognizer = self.recognizer_factory(config)
        except Exception as exc:
            log.error("reload failed, keeping the previous gallery and model: %s", exc)
            self._status("reload_failed", str(exc))
            return False
        old, self.recognizer = self.recognizer, recognizer
        self.model_id = model_id_of(recognizer)
        self.engine.reset()
        if self.liveness is not None:
            self.liveness.reset()
        close = getattr(old, "close", None)
        if close is not None:
            close()
        return True

    def _do_reload(self) -> None:
        self._reload.clear()
        if self.config_path is None:
            new = self.config
        else:
            try:
                new = load_config(self.config_path)
            except ConfigError as exc:
                log.error("SIGHUP: new config refused, keeping the running one: %s", exc)
                self._status("reload_failed", str(exc))
                return
        restart_needed = [name for name in ("device_id", "camera", "mqtt", "queue", "commands", "door_contact",
                                                 "homeassistant", "access_log", "metrics", "live_view",
                                                 "unknown_faces", "liveness")
                          if getattr(new, name) != getattr(self.config, name)]
        if new.relay.pin != self.config.relay.pin or new.relay.active_high != self.config.relay.active_high:
            restart_needed.append("relay")
        if restart_needed:
            log.warning("SIGHUP: changes to %s take effect after a restart", ", ".join(restart_needed))
        applied = replace(self.config, model=new.model, gallery=new.gallery, decision=new.decision,
                          health=new.health, logging=new.logging,
                          relay=replace(self.config.relay, unlock_s=new.relay.unlock_s))
        if self._rebuild_recognizer(applied):
            self.config = applied
            self.engine = DecisionEngine.from_config(applied.decision)
            if self.relay is not None:
                self.relay.config = applied.relay
            logging.getLogger().setLevel(applied.logging.level)
            self._status("reloaded", "config and gallery reloaded")

    def start(self) -> None:
        gallery = getattr(self.recognizer, "gallery", None)
        if gallery is not None and not gallery.people():
            log.warning("the gallery %s has nobody enrolled: every face will be 'unknown'", self.config.gallery.path)
        stale = gallery.stale_people() if gallery is not None else []
        if stale:
            log.warning("%d people were enrolled with another model and cannot be recognized until they are "
                        "re-enrolled with %s: %s", len(stale), self.model_id, ", ".join(stale))
        self.mqtt.start()
        if self.metrics_server is not None:
            self.metrics_server.start()
        if self.live_view_server is not None:
            self.live_view_server.start()
        detail = f"model {self.model_id}"
        if stale:
            detail += f"; must be re-enrolled for this model: {', '.join(stale)}"
        self._status("started", detail)
        self._door("startup")
        self.camera.start()

    def process(self, image: np.ndarray, frame_time: str | None = None) -> list[Decision]:
        """Recognize one frame, vote, and act on the decisions."""
        started = time.monotonic()
        recognitions = self.recognizer.recognize(image)
        if self.liveness is not None:
            self.liveness.observe(time.monotonic(), image, recognitions)
        recognized = time.monotonic()
        self._analyse_ms.append((recognized - started) * 1000)
        for stage, seconds in (getattr(self.recognizer, "last_timings", None) or {}).items():
            self.stage_seconds.observe(stage, seconds)
        self.stage_seconds.observe("recognize", recognized - started)
        self.stats["frames_analysed"] += 1
        self._had_faces = bool(recognitions)
        if self.live_frames is not None:
            self.live_frames.put(image, [(r.box, r.name, float(r.distance)) for r in recognitions])
        observations = [Observation(r.name, float(r.distance), tuple(float(v) for v in r.box)) for r in recognitions]
        tz = None
        if self.config.decision.timezone:
            from zoneinfo import ZoneInfo

            tz = ZoneInfo(self.config.decision.timezone)
        now = time.monotonic()
        decisions = self.engine.update(now, datetime.now(tz).astimezone(tz), observations)
        self.stage_seconds.observe("decide", time.monotonic() - recognized)
        for decision in decisions:
            if decision.action == "unlock" and self.liveness is not None:
                self._hold_for_liveness(decision, now)
                continue
            self._act(decision, frame_time, image)
        if self.liveness is not None:
            for outcome in self.liveness.step(now):
                self._liveness_outcome(outcome, frame_time, image)
            for person, why in self.liveness.take_dropped():
                self._held.pop(person, None)
                self.engine.forget(person)
                self._clear_prompt()
                log.info("liveness check for %s dropped: %s", person, why)
        return decisions

    # --- liveness ----------------------------------------------------------------------------------------------

    def _hold_for_liveness(self, decision: Decision, now: float) -> None:
        """An identity decision waits for proof of life on the same face; it never unlocks by itself."""
        assert self.liveness is not None and decision.name is not None
        if self.liveness.begin(decision.name, now):
            self._held[decision.name] = decision
            log.info("%s recognized; checking liveness (%s)", decision.name, self.liveness.mode)
        else:
            # Only the nearest (largest) face is tracked for liveness; let the votes run on.
            self.engine.forget(decision.name)

    def _liveness_outcome(self, outcome: Outcome, frame_time: str | None, image: np.ndarray) -> None:
        verdict, cfg = outcome.verdict, self.config
        if verdict.status == "challenge":
            assert verdict.direction is not None
            if self.prompter is not None:
                self.prompter.show(verdict.direction)
            # Not queued: a prompt delivered after the broker comes back would be useless.
            self.emit(self.topics.prompt, prompt_event(outcome.person, verdict.direction,
                                                       cfg.liveness.challenge_s, cfg.device_id, cfg.camera.name),
                      durable=False)
            if self.echo:
                print(f"{utc_now_iso()} PROMPT     {outcome.person}: turn your head to your {verdict.direction}",
                      flush=True)
            return
        self._clear_prompt()
        decision = self._held.pop(outcome.person, None)
        if verdict.status == "live" and decision is not None:
            self._act(replace(decision, box=outcome.box), frame_time, image,
                      liveness={"mode": cfg.liveness.mode, "method": verdict.method,
                                "elapsed_s": round(verdict.detail.get("elapsed_s", 0.0), 2)})
            return
        reason = verdict.reason or "liveness check failed"
        self.emit(self.topics.spoof, spoof_event(outcome.person, reason, verdict.detail, outcome.box,
                                                 cfg.device_id, cfg.camera.name, self.model_id, cfg.liveness.mode,
                                                 verdict.direction))
        if self.echo:
            print(f"{utc_now_iso()} SPOOF?     {outcome.person}: {reason} (door stays locked)", flush=True)

    def _clear_prompt(self) -> None:
        if self.prompter is not None:
            self.prompter.clear()

    def _act(self, decision: Decision, frame_time: str | None, image: np.ndarray | None = None,
             liveness: dict[str, Any] | None = None) -> None:
        unlock_s = self.config.relay.unlock_s if self.relay is not None else None
        if decision.action == "unlock" and self.relay is not None:
            self.relay.unlock(reason=f"recognized {decision.name}")  # the door first, the message second
            self.stats["unlocks"] += 1
        event = face_event(decision, self.config.device_id, self.config.camera.name, self.model_id, frame_time,
                           unlock_s)
        if decision.action == "unlock":
            event["liveness"] = liveness or {"mode": "off"}
        if decision.action == "unknown" and image is not None:
            self._keep_unknown_face(event, image, decision)
        self.emit(self.topics.for_decision(decision), event)
        who = decision.name or "unknown person"
        line = (f"{event['time']} {event['type'].upper():10s} {who} distance {decision.distance:.3f} "
                f"votes {decision.votes}/{decision.frames} (need {decision.required})")
        if decision.action == "unlock":
            line += f" -> door unlocked for {unlock_s} s" if unlock_s else " (relay disabled)"
        if self.echo:
            print(line, flush=True)

    def _keep_unknown_face(self, event: dict[str, Any], image: np.ndarray, decision: Decision) -> None:
        """Store the stranger's crop as <event id>.jpg and name it in the event (optional `crop` field).

        A full disk or a bad box must not cost the event, so a failure is logged and the event goes out
        without `crop`."""
        if self.unknown_faces is None:
            return
        try:
            path = self.unknown_faces.save(event["id"], image, decision.box)
        except Exception as exc:
            log.error("unknown face %s: crop not kept in %s (%s)", event["id"], self.unknown_faces.directory, exc)
            return
        event["crop"] = path.name

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        cpu = sum(os.times()[:2])
        mark_t, mark_cpu = self._cpu_mark
        self._cpu_mark = (now, cpu)
        ms = sorted(self._analyse_ms)
        return {"uptime_s": round(now - self._started, 1), "camera_ok": self.camera.ok,
                "frames_read": self.camera.frames_read, **self.stats,
                "analyse_ms_median": round(ms[len(ms) // 2], 1) if ms else None,
                "mqtt_connected": self.mqtt.connected.is_set(), "queue_depth": len(self.queue),
                "queue_dropped": self.queue.dropped, "rss_mb": round(_rss_mb(), 1),
                "cpu_percent": round(100 * (cpu - mark_cpu) / max(now - mark_t, 1e-6), 1),
                "model_id": self.model_id, "door": self._door_state, "liveness": self.config.liveness.mode,
                "lock": "unlocked" if self.relay is not None and self.relay.unlocked else "locked"}

    def last_events(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first, health messages left out (the live view shows health on its own)."""
        events = [e for e in list(self.recent_events) if e["type"] != "health"]
        return events[::-1][:limit]

    def live_health(self) -> dict[str, Any]:
        """Health for the live view without touching health()'s CPU sampling window."""
        last = next((e for e in reversed(list(self.recent_events)) if e["type"] == "health"), {})
        fields = {k: v for k, v in last.items() if k not in ("id", "type", "device", "camera")}
        fields.update({"camera_ok": self.camera.ok, "mqtt_connected": self.mqtt.connected.is_set(),
                       "queue_depth": len(self.queue), "frames_analysed": self.stats["frames_analysed"],
                       "uptime_s": round(time.monotonic() - self._started, 1), "lock":
                       "unlocked" if self.relay is not None and self.relay.unlocked else "locked",
                       "door": self._door_state})
        if "time" in fields:
            fields["last_health_message"] = fields.pop("time")
        return fields

    def render_metrics(self) -> str:
        """Prometheus text format: frames, stage latencies, events by kind, queue, MQTT, last frame age."""
        metric = prometheus.metric
        with self._events_lock:
            events = sorted(self.events_by_kind.items())
        age = time.monotonic() - self._last_frame if self._last_frame is not None else float("nan")
        lines = [
            *metric("edge_face_frames_read_total", "counter", "Frames read from the camera.",
                    [({}, self.camera.frames_read)]),
            *metric("edge_face_frames_processed_total", "counter", "Frames run through the recognizer.",
                    [({}, self.stats["frames_analysed"])]),
            *metric("edge_face_frames_skipped_total", "counter", "Frames skipped by the motion gate.",
                    [({}, self.stats["frames_skipped"])]),
            *metric("edge_face_recognize_errors_total", "counter", "Frames whose recognition failed.",
                    [({}, self.stats["recognize_errors"])]),
            *metric("edge_face_unlocks_total", "counter", "Times the relay was energized.",
                    [({}, self.stats["unlocks"])]),
            *metric("edge_face_events_total", "counter", "Events emitted, by type.",
                    [({"kind": kind}, count) for kind, count in events]),
            *self.stage_seconds.render(),
            *metric("edge_face_queue_depth", "gauge", "Events waiting on disk for the broker.",
                    [({}, len(self.queue))]),
            *metric("edge_face_queue_dropped_total", "counter", "Events dropped over the queue bound.",
                    [({}, self.queue.dropped)]),
            *metric("edge_face_mqtt_connected", "gauge", "1 while connected to the MQTT broker.",
                    [({}, 1 if self.mqtt.connected.is_set() else 0)]),
            *metric("edge_face_camera_ok", "gauge", "1 while the camera delivers frames.",
                    [({}, 1 if self.camera.ok else 0)]),
            *metric("edge_face_last_frame_age_seconds", "gauge", "Seconds since the last frame was read "
                    "(NaN before the first).", [({}, age)]),
        ]
        return "\n".join(lines) + "\n"

    def run(self) -> int:
        """Main loop until stopped; returns the exit status."""
        self.start()
        sd_notify.ready(f"watching {self.config.camera.source}")
        wd_interval = sd_notify.watchdog_interval()
        next_wd = next_health = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if wd_interval is not None and now >= next_wd:
                    sd_notify.watchdog()
                    next_wd = now + wd_interval
                if now >= next_health:
                    h = self.health()
                    self.emit(self.topics.health, base_event("health", self.config.device_id,
                                                             self.config.camera.name, **h), durable=False)
                    next_health = now + self.config.health.interval_s
                if self._reload.is_set():
                    self._do_reload()
                if self._reload_gallery.is_set():
                    self._reload_gallery.clear()
                    if self._rebuild_recognizer(self.config):
                        self._status("reloaded", "gallery reloaded")
                frame = self.camera.latest(timeout=0.1)
                if frame is None:
                    continue
                self._last_frame = frame.captured
                if not self.gate.should_analyse(frame.image, time.monotonic(), self._had_faces):
                    self.stats["frames_skipped"] += 1
                    continue
                try:
                    self.process(frame.image, utc_now_iso())
                except EdgeError as exc:
                    self.stats["recognize_errors"] += 1
                    log.warning("frame %d not analysed: %s", frame.seq, exc)
                except Exception:
                    self.stats["recognize_errors"] += 1
                    log.exception("frame %d: recognition failed", frame.seq)
                    if self.relay is not None:
                        self.relay.lock("error")
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Locked relay, `offline` published, undelivered events left in the on-disk queue."""
        sd_notify.stopping()
        if self.relay is not None:
            self.relay.lock("shutdown")
        self.camera.stop()
        if self.relay is not None:
            self.relay.close()
        if self.prompter is not None:
            self.prompter.close()
        if self.contact is not None:
            self.contact.close()
        self._status("stopping", f"{len(self.queue)} event(s) left in the queue")
        self.mqtt.stop(flush_s=2.0)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.live_view_server is not None:
            self.live_view_server.stop()
        log.info("stopped; %d event(s) kept in %s", len(self.queue), self.queue.path)
        self.queue.close()
        if self.access_log is not None:
            self.access_log.close()


# --- demo ------------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
DEMO_PERSON = "Barack_Obama"


def _demo_photos() -> tuple[Path, list[Path]]:
    """(enrollment photo, frames to show): ../shared/faces, else the face_recognition test images."""
    shared = REPO.parent / "shared" / "faces"
    obama = shared / "people" / "Barack_Obama"
    if obama.is_dir() and (shared / "people" / "Joe_Biden").is_dir():
        photos = sorted(obama.glob("*.jpg"))
        biden = sorted((shared / "people" / "Joe_Biden").glob("*.jpg"))
        empty = sorted((shared / "noface").glob("*"))[:1]
        return photos[0], [*empty, photos[1], *biden[:1], *empty, photos[2 % len(photos)]]
    cache = Path(os.environ.get("EDGE_FACE_CACHE", Path.home() / ".cache" / "edge-face"))
    fr = cache / "face_recognition_test_images"
    names = ["obama.jpg", "obama2.jpg", "biden.jpg", "obama3.jpg"]
    if all((fr / n).is_file() for n in names):
        return fr / "obama.jpg", [fr / "obama2.jpg", fr / "biden.jpg", fr / "obama3.jpg"]
    raise ConfigError(f"--demo needs face photos: {shared}/people or {fr} (run the tests once to fetch them)")


def prepare_demo(config: Config, state_dir: Path) -> Config:
    """A demo state dir: frame folder (links to real photos), gallery with the demo person enrolled."""
    from edge.gallery import Gallery
    from edge.images import load_image

    enroll, frames = _demo_photos()
    frame_dir = state_dir / "frames"
    frame_dir.mkdir(parents=True, exist_ok=True)
    for old in frame_dir.iterdir():
        old.unlink()
    for i, photo in enumerate(frames):
        (frame_dir / f"{i:02d}_{photo.parent.name}_{photo.name}").symlink_to(photo.resolve())
    demo = replace(
        config,
        camera=replace(config.camera, source=str(frame_dir), loop=True, image_hold_s=2.0, fps=5.0, width=640,
                       height=480),
        gallery=replace(config.gallery, path=str(state_dir / "gallery.db")),
        queue=replace(config.queue, path=str(state_dir / "events.db")),
        commands=replace(config.commands, nonce_path=str(state_dir / "nonces.json")),
        decision=replace(config.decision, cooldown_s=min(config.decision.cooldown_s, 6.0),
                         unknown_interval_s=min(config.decision.unknown_interval_s, 6.0)),
        # The demo shows still photos, which no liveness check may accept.
        liveness=replace(config.liveness, mode="off"),
    )
    recognizer = default_recognizer(demo)
    gallery = Gallery(demo.gallery.path, model_id_of(recognizer))
    if DEMO_PERSON not in gallery.people():
        image = load_image(enroll)
        faces = recognizer.detector.detect(image)  # largest first
        if not faces:
            raise ConfigError(f"demo enrollment photo {enroll} shows no face")
        template = recognizer.enrollment_embedding(image, faces[0])  # as tools/enroll.py stores it
        digest = hashlib.sha256(enroll.read_bytes()).hexdigest()
        gallery.add(DEMO_PERSON, template[None, :], [digest], [str(enroll)])
        print(f"demo: enrolled {DEMO_PERSON} from {enroll}", flush=True)
    print("demo: liveness is OFF because the demo camera shows still photos; a real door keeps "
          "liveness.mode: challenge (docs/liveness.md)", flush=True)
    print(f"demo: showing {len(frames)} photos in a loop from {frame_dir}; MQTT {demo.mqtt.host}:{demo.mqtt.port}, "
          f"topics {Topics(demo.mqtt.topic_prefix, demo.device_id).base}/#", flush=True)
    return demo


# --- entry point ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Face-recognition door daemon.")
    parser.add_argument("--config", default="config.yaml", help="YAML config (see config.yaml for every option)")
    parser.add_argument("--demo", action="store_true", help="run on demo photos with a demo gallery (see docs)")
    parser.add_argument("--demo-dir", default="var/demo", help="state folder for --demo")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.logging.level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.check_config:
        print(f"{args.config}: OK")
        return 0
    try:
        if args.demo:
            config = prepare_demo(config, Path(args.demo_dir).resolve())
        daemon = Daemon(config, config_path=None if args.demo else args.config, echo=True)
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: daemon.request_stop("SIGINT"))
    signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
