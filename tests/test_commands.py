"""Signed commands: only a fresh, correctly signed, never-seen command for this device is accepted."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from edge.commands import CommandRejected, CommandVerifier, sign_command

SECRET = b"0123456789abcdef-secret"
NOW = 1_700_000_000.0


def verifier(tmp_path: Path, now: float = NOW) -> CommandVerifier:
    return CommandVerifier(SECRET, "door-1", max_age_s=30, nonce_path=tmp_path / "nonces.json", clock=lambda: now)


def test_valid_command_accepted_once(tmp_path: Path) -> None:
    v = verifier(tmp_path)
    raw = sign_command(SECRET, "door-1", "unlock", {"duration_s": 2}, ts=NOW - 5)
    command = v.verify(raw)
    assert (command.name, command.args) == ("unlock", {"duration_s": 2})
    with pytest.raises(CommandRejected, match="replayed"):
        v.verify(raw)


def test_replay_refused_after_restart(tmp_path: Path) -> None:
    raw = sign_command(SECRET, "door-1", "reload", ts=NOW)
    verifier(tmp_path).verify(raw)
    with pytest.raises(CommandRejected, match="replayed"):
        verifier(tmp_path, NOW + 1).verify(raw)


def _forge(payload: dict, secret: bytes = SECRET) -> bytes:
    text = json.dumps(payload)
    return json.dumps({"payload": text, "sig": hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "malformed"),
        (b'{"payload": 5}', "malformed"),
        (json.dumps({"payload": json.dumps({"command": "unlock"})}).encode(), "unsigned"),
        (json.dumps({"payload": "{}", "sig": "00" * 32}).encode(), "bad signature"),
        (sign_command(b"another-secret-0000", "door-1", "unlock", ts=NOW), "bad signature"),
        (sign_command(SECRET, "door-2", "unlock", ts=NOW), "addressed to device"),
        (sign_command(SECRET, "door-1", "unlock", ts=NOW - 31), "stale"),
        (sign_command(SECRET, "door-1", "unlock", ts=NOW + 3600), "stale"),
        (sign_command(SECRET, "door-1", "open_sesame", ts=NOW), "unknown command"),
        (sign_command(SECRET, "door-1", "unlock", {"duration_s": 3600}, ts=NOW), "duration_s"),
        (sign_command(SECRET, "door-1", "unlock", {"duration_s": "5"}, ts=NOW), "duration_s"),
        (sign_command(SECRET, "door-1", "unlock", ts=NOW, nonce="short"), "nonce"),
        (_forge({"command": "unlock", "args": {}, "device": "door-1", "ts": "now", "nonce": "abcdefgh12"}), "ts"),
        (_forge({"command": "unlock", "args": [], "device": "door-1", "ts": NOW, "nonce": "abcdefgh12"}), "args"),
        (_forge(["unlock"]), "payload must be an object"),
        (b"{" * 5000, "too large"),
    ],
)
def test_bad_commands_rejected_with_reason(tmp_path: Path, raw: bytes, reason: str) -> None:
    with pytest.raises(CommandRejected, match=reason):
        verifier(tmp_path).verify(raw)


def test_signature_covers_the_payload(tmp_path: Path) -> None:
    outer = json.loads(sign_command(SECRET, "door-1", "unlock", {"duration_s": 1}, ts=NOW))
    outer["payload"] = outer["payload"].replace('"duration_s":1', '"duration_s":29')
    with pytest.raises(CommandRejected, match="bad signature"):
        verifier(tmp_path).verify(json.dumps(outer).encode())


def test_corrupt_nonce_store_does_not_crash(tmp_path: Path) -> None:
    (tmp_path / "nonces.json").write_text("{not json")
    assert verifier(tmp_path).verify(sign_command(SECRET, "door-1", "reload", ts=NOW)).name == "reload"
