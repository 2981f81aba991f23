"""JSON event payloads and their MQTT topics, in one place so docs, daemon and tests agree.

Every event carries a unique id (consumers de-duplicate at-least-once delivery with it), the UTC
time in ISO 8601, the device and camera, and for face events the person, distance, votes and box.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

from edge.decision import Decision

EVENT_KINDS = ("recognized", "unknown", "denied", "spoof_suspected", "prompt", "door", "status", "health", "command")


def utc_now_iso() -> str:
    """Current UTC time as ISO 8601 with milliseconds and a Z suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Topics:
    """The topic tree under `<prefix>/<device_id>/`."""

    def __init__(self, prefix: str, device_id: str) -> None:
        self.base = f"{prefix}/{device_id}"
        self.availability = f"{self.base}/availability"  # online / offline, retained, last will
        self.recognized = f"{self.base}/event/recognized"
        self.unknown = f"{self.base}/event/unknown"
        self.denied = f"{self.base}/event/denied"
        self.spoof = f"{self.base}/event/spoof_suspected"  # liveness refused an enrolled face
        self.prompt = f"{self.base}/event/prompt"  # liveness asks the person to turn their head
        self.door = f"{self.base}/door"  # retained door state
        self.status = f"{self.base}/status"
        self.health = f"{self.base}/health"
        self.command = f"{self.base}/command"
        self.command_result = f"{self.base}/command/result"

    def for_decision(self, decision: Decision) -> str:
        return {"unlock": self.recognized, "denied": self.denied, "unknown": self.unknown}[decision.action]


def base_event(kind: str, device: str, camera: str | None, **fields: Any) -> dict[str, Any]:
    """Fields every event shares, plus `fields`."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    event: dict[str, Any] = {"id": str(uuid.uuid4()), "type": kind, "time": utc_now_iso(), "device": device,
                             "camera": camera}
    event.update(fields)
    return event


def face_event(decision: Decision, device: str, camera: str, model_id: str, frame_time: str | None = None,
               unlock_s: float | None = None) -> dict[str, Any]:
    """A recognized / denied / unknown event from a decision."""
    kind = {"unlock": "recognized", "denied": "denied", "unknown": "unknown"}[decision.action]
    x, y, w, h = (round(float(v), 1) for v in decision.box)
    event = base_event(
        kind, device, camera,
        person=decision.name,
        # No enrolled person at all gives an infinite distance, which JSON cannot carry: null.
        distance=round(float(decision.distance), 4) if math.isfinite(decision.distance) else None,
        votes={"count": decision.votes, "frames": decision.frames, "required": decision.required},
        box={"x": x, "y": y, "w": w, "h": h},
        model_id=model_id,
        frame_time=frame_time,
    )
    if kind == "recognized":
        event["unlock_s"] = unlock_s
    if kind == "denied":
        event["reason"] = "outside schedule"
    return event


def _rounded(detail: dict[str, float]) -> dict[str, float | None]:
    return {k: (round(float(v), 4) if math.isfinite(float(v)) else None) for k, v in detail.items()}


def spoof_event(person: str, reason: str, detail: dict[str, float], box: tuple[float, float, float, float],
                device: str, camera: str, model_id: str, mode: str, direction: str | None = None) -> dict[str, Any]:
    """An enrolled person's face that failed the liveness check: no unlock."""
    x, y, w, h = (round(float(v), 1) for v in box)
    return base_event("spoof_suspected", device, camera, person=person, reason=reason, liveness_mode=mode,
                      challenge=direction, evidence=_rounded(detail), box={"x": x, "y": y, "w": w, "h": h},
                      model_id=model_id)


def prompt_event(person: str, direction: str, timeout_s: float, device: str, camera: str) -> dict[str, Any]:
    """Ask the person at the door to turn their head to their own `direction` within `timeout_s`."""
    return base_event("prompt", device, camera, person=person, direction=direction, timeout_s=timeout_s,
                      text=f"Please turn your head to your {direction}")


def door_event(device: str, lock: str, door: str, reason: str) -> dict[str, Any]:
    """Door state: lock 'locked'/'unlocked', door 'open'/'closed'/'unknown'/'held_open'."""
    return base_event("door", device, None, lock=lock, door=door, reason=reason)


def status_event(device: str, camera: str | None, state: str, detail: str = "", **fields: Any) -> dict[str, Any]:
    """Daemon status changes: started, stopping, camera_error, camera_ok, queue_overflow, command_rejected..."""
    return base_event("status", device, camera, state=state, detail=detail, **fields)


def encode(event: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
