"""Authenticated remote commands: HMAC-SHA256 over the exact payload bytes, timestamp and nonce.

Wire format (JSON): `{"payload": "<JSON text>", "sig": "<hex HMAC-SHA256 of the payload text>"}`
where the payload text holds `{"command": "unlock"|"reload", "args": {...}, "device": "<device_id>",
"ts": <unix seconds>, "nonce": "<8-64 chars>"}`. Signing the exact text avoids canonical-JSON
disagreements between languages. A command is refused when the signature is missing or wrong, the
device differs, the timestamp is further than `max_age_s` from our clock, or the nonce was seen
before (nonces are kept on disk for `max_age_s`, so a replay after a restart is refused too).
Usage: `python -m edge.commands --config config.yaml unlock --duration 5` prints a signed command.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMMANDS = ("unlock", "reload")
MAX_PAYLOAD = 4096


class CommandRejected(Exception):
    """A command that must be ignored; the message says why (it is logged, never acted on)."""


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, Any]
    ts: float
    nonce: str


def sign_command(secret: bytes, device: str, command: str, args: dict[str, Any] | None = None,
                 ts: float | None = None, nonce: str | None = None) -> bytes:
    """Build the signed wire message for `command`."""
    body = {"command": command, "args": args or {}, "device": device,
            "ts": time.time() if ts is None else ts, "nonce": nonce or secrets.token_hex(16)}
    text = json.dumps(body, separators=(",", ":"))
    sig = hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"payload": text, "sig": sig}).encode()


class CommandVerifier:
    """Checks signature, device, freshness and nonce; remembers nonces for `max_age_s`."""

    def __init__(self, secret: bytes, device: str, max_age_s: float = 30.0, nonce_path: str | Path | None = None,
                 max_unlock_s: float = 30.0, clock: Any = time.time) -> None:
        self.secret = secret
        self.device = device
        self.max_age_s = max_age_s
        self.max_unlock_s = max_unlock_s
        self.nonce_path = Path(nonce_path) if nonce_path else None
        self.clock = clock
        self._lock = threading.Lock()
        self._nonces: dict[str, float] = self._load_nonces()

    def _load_nonces(self) -> dict[str, float]:
        if self.nonce_path is None or not self.nonce_path.is_file():
            return {}
        try:
            data = json.loads(self.nonce_path.read_text())
            return {str(k): float(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            # A corrupt store cannot be trusted; refusing everything for max_age_s would lock the door
            # remotely, so start empty: the timestamp check still bounds replays to that window.
            return {}

    def _save_nonces(self) -> None:
        if self.nonce_path is None:
            return
        tmp = self.nonce_path.with_suffix(".tmp")
        try:
            self.nonce_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._nonces))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.nonce_path)
        except OSError:
            pass

    def verify(self, raw: bytes) -> Command:
        """Return the command, or raise CommandRejected saying why."""
        if len(raw) > MAX_PAYLOAD:
            raise CommandRejected(f"too large ({len(raw)} bytes)")
        try:
            outer = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise CommandRejected("malformed: not JSON") from None
        if not isinstance(outer, dict) or not isinstance(outer.get("payload"), str):
            raise CommandRejected("malformed: expected {\"payload\": \"...\", \"sig\": \"...\"}")
        sig = outer.get("sig")
        if not isinstance(sig, str) or not sig:
            raise CommandRejected("unsigned")
        text: str = outer["payload"]
        expected = hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sig.lower()):
            raise CommandRejected("bad signature")
        try:
            body = json.loads(text)
        except ValueError:
            raise CommandRejected("malformed: signed payload is not JSON") from None
        if not isinstance(body, dict):
            raise CommandRejected("malformed: payload must be an object")
        name, args, device, ts, nonce = (body.get(k) for k in ("command", "args", "device", "ts", "nonce"))
        if name not in COMMANDS:
            raise CommandRejected(f"unknown command {name!r}")
        if not isinstance(args, dict):
            raise CommandRejected("malformed: args must be an object")
        if device != self.device:
            raise CommandRejected(f"addressed to device {device!r}, not {self.device!r}")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool):
            raise CommandRejected("malformed: ts must be a number")
        if not isinstance(nonce, str) or not 8 <= len(nonce) <= 64:
            raise CommandRejected("malformed: nonce must be a string of 8-64 characters")
        now = self.clock()
        if abs(now - ts) > self.max_age_s:
            raise CommandRejected(f"stale: timestamp is {now - ts:+.0f} s from the device clock")
        if name == "unlock":
            duration = args.get("duration_s", None)
            if duration is not None and (not isinstance(duration, (int, float)) or isinstance(duration, bool)
                                         or not 0 < duration <= self.max_unlock_s):
                raise CommandRejected(
                    f"unlock duration_s must be a number in (0, {self.max_unlock_s}], got {duration!r}")
        with self._lock:
            self._nonces = {k: v for k, v in self._nonces.items() if now - v <= 2 * self.max_age_s}
            if nonce in self._nonces:
                raise CommandRejected("replayed nonce")
            self._nonces[nonce] = now
            self._save_nonces()
        return Command(name, dict(args), float(ts), nonce)


def main(argv: list[str] | None = None) -> int:
    """Print a signed command for this device (pipe it to mosquitto_pub -s)."""
    from edge.config import load_config
    from edge.errors import EdgeError
    from edge.events import Topics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--duration", type=float, default=None, help="unlock duration in seconds")
    parser.add_argument("--topic", action="store_true", help="print the command topic instead")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.topic:
            print(Topics(config.mqtt.topic_prefix, config.device_id).command)
            return 0
        if not config.commands.enabled:
            print(f"{args.config}: commands.enabled is false", file=sys.stderr)
            return 2
        extra = {"duration_s": args.duration} if args.duration is not None else {}
        sys.stdout.write(sign_command(config.command_secret(), config.device_id, args.command, extra).decode() + "\n")
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
