"""The daemon's typed configuration: one dataclass per concern, validated before anything starts.

A door controller that starts with a typo in its config silently does the wrong thing, so every
key is checked: unknown keys, wrong types and impossible values raise `ConfigError` naming the
dotted key (`mqtt.port: must be an integer 1-65535, got 'abc'`). Each field carries a title and
a description (dataclass metadata) so the shipped `config.yaml` and docs can be checked against it.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from datetime import time as dtime
from pathlib import Path
from typing import Any, Literal

import yaml

from edge.errors import ConfigError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TOPIC_RE = re.compile(r"^[^#+\s][^#+]*$")


def _f(default: Any, title: str, description: str, check: Any = None, factory: Any = None,
       secret: bool = False) -> Any:
    """A dataclass field with the documentation and optional value check attached.

    `secret` keeps the value out of the dataclass's repr, so a logged or printed config never
    shows it."""
    meta = {"title": title, "description": description, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


# --- value checks: return an error text (without the key) or None --------------------------------


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be > 0, got {value!r}"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value!r}"


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"must be an integer 1-65535, got {value!r}"


def _name(value: str) -> str | None:
    return None if _NAME_RE.match(value) else f"must be 1-64 characters of A-Z a-z 0-9 _ . -, got {value!r}"


def _topic_prefix(value: str) -> str | None:
    if not value or not _TOPIC_RE.match(value) or value.endswith("/"):
        return f"must be a non-empty MQTT topic without wildcards or a trailing '/', got {value!r}"
    return None


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _threads(value: int) -> str | None:
    return None if 1 <= value <= 64 else f"must be an integer 1-64, got {value!r}"


def _min_face(value: int) -> str | None:
    # MTCNN's P-net looks through a 12 px window; smaller faces would need the frame upsampled.
    return None if 12 <= value <= 10000 else f"must be an integer 12-10000 (pixels), got {value!r}"


def _threshold(value: float | None) -> str | None:
    if value is None:
        return None
    return None if 0 < value < 4 else f"must be an L2 distance in (0, 4) or null, got {value!r}"


def _pin(value: int | str) -> str | None:
    if isinstance(value, int):
        return None if 0 <= value <= 63 else f"must be a GPIO number 0-63 or a pin name like 'GPIO17', got {value!r}"
    return None if value.strip() else "must not be empty"


def _fraction(value: float) -> str | None:
    return None if 0 <= value <= 1 else f"must be between 0 and 1, got {value!r}"


# --- sections ------------------------------------------------------------------------------------


@dataclass
class CameraConfig:
    source: int | str = _f(
        0, "Video source",
        "V4L2 device index (0) or path (/dev/video0), a video file, an rtsp:// or http(s):// URL, a folder of "
        "images (shown in name order, for demos and tests), or 'picamera2' for the Raspberry Pi camera.")
    name: str = _f("door", "Camera id", "Name of this camera in every event.", _name)
    loop: bool = _f(False, "Loop", "Restart a video file or image folder from the beginning when it ends.")
    width: int | None = _f(None, "Width", "Requested capture width in pixels (null: the source's default).")
    height: int | None = _f(None, "Height", "Requested capture height in pixels (null: the source's default).")
    fps: float = _f(10.0, "Frame rate", "Frames per second read from files and image folders (live sources "
                    "run at their own rate).", _positive)
    image_hold_s: float = _f(1.0, "Image hold time", "How long an image-folder source shows each image.", _positive)
    retry_s: float = _f(1.0, "First retry delay", "Seconds before reopening a failed source; doubles each "
                        "failure up to retry_max_s.", _positive)
    retry_max_s: float = _f(30.0, "Longest retry delay", "Upper bound of the reopen backoff.", _positive)
    read_timeout_s: float = _f(5.0, "Read timeout", "A live source that delivers no frame for this long is "
                               "treated as failed and reopened.", _positive)
    motion_threshold: float = _f(
        2.0, "Motion threshold",
        "Mean absolute change (0-255 grey levels, on a 64x48 thumbnail) below which a frame counts as unchanged. "
        "Unchanged frames with no face in the last analysed frame skip detection entirely.", _non_negative)
    idle_check_s: float = _f(2.0, "Idle re-check", "Analyse a frame at least this often even when nothing "
                             "moves (catches slow changes).", _positive)


@dataclass
class ModelConfig:
    path: str = _f("models/facenet/facenet_dynamic.tflite", "Embedding model",
                   "FaceNet .tflite file; its metadata JSON lies beside it.", _non_empty)
    mtcnn_dir: str = _f("models/mtcnn", "Detector models", "Folder with the MTCNN networks.", _non_empty)
    threads: int = _f(2, "Threads", "CPU threads for each network (a Raspberry Pi 4/5 has 4 cores).", _threads)
    min_face_size: int = _f(40, "Smallest face", "Smallest face in pixels the detector looks for; larger "
                            "is faster and ignores people far from the door.", _min_face)
    threshold: float | None = _f(None, "Match threshold", "L2 distance at or below which a face matches an "
                                 "enrolled person (null: the model's calibrated threshold).", _threshold)


@dataclass
class GalleryConfig:
    path: str = _f("/var/lib/edge-face/gallery.db", "Gallery", "SQLite gallery of enrolled people.", _non_empty)


@dataclass
class ScheduleWindow:
    days: list[str] = _f(None, "Weekdays", "Any of mon tue wed thu fri sat sun.", factory=lambda: list(WEEKDAYS))
    start: str = _f("00:00", "From", "Local time HH:MM when access starts.")
    end: str = _f("24:00", "Until", "Local time HH:MM when access ends (24:00 = midnight; end before start "
                  "means the window runs past midnight into the next day).")


@dataclass
class DecisionConfig:
    votes_k: int = _f(2, "Votes needed (K)", "Unlock when the same person is recognized in K ...", _positive)
    votes_n: int = _f(3, "Frames considered (N)", "... of the last N analysed frames ...", _positive)
    window_s: float = _f(2.0, "Voting window (T)", "... all within T seconds.", _positive)
    cooldown_s: float = _f(10.0, "Cooldown", "After an unlock or denial of a person, ignore them this long.",
                           _non_negative)
    unknown_interval_s: float = _f(30.0, "Unknown rate limit", "At most one 'unknown' event this often.",
                                   _non_negative)
    default_access: Literal["always", "never"] = _f(
        "always", "Access without a schedule", "What an enrolled person without an entry in schedules gets.")
    timezone: str | None = _f(None, "Time zone", "IANA zone for schedules, e.g. Europe/Berlin (null: the "
                              "system's local time).")
    schedules: dict[str, list[ScheduleWindow]] = _f(
        None, "Access schedules", "Per enrolled person: a list of weekday/time windows when they may enter.",
        factory=dict)


@dataclass
class TlsConfig:
    enabled: bool = _f(False, "TLS", "Connect with TLS.")
    ca_file: str | None = _f(None, "CA file", "PEM file of the CA that signed the broker's certificate "
                             "(null: the system's CAs).")
    cert_file: str | None = _f(None, "Client certificate", "PEM client certificate for mutual TLS.")
    key_file: str | None = _f(None, "Client key", "PEM private key of the client certificate.")
    insecure: bool = _f(False, "Skip hostname check", "Do not check the broker's hostname (testing only).")


@dataclass
class MqttConfig:
    enabled: bool = _f(True, "MQTT", "Publish events; when false they are only logged.")
    host: str = _f("127.0.0.1", "Broker host", "Hostname or address of the MQTT broker.", _non_empty)
    port: int = _f(1883, "Broker port", "1883 plain, 8883 for TLS by convention.", _port)
    username: str | None = _f(None, "User name", "Broker user (null: anonymous).")
    password: str | None = _f(None, "Password", "Broker password.", secret=True)
    client_id: str | None = _f(None, "Client id", "MQTT client id (null: edge-face-<device_id>).")
    topic_prefix: str = _f("edge-face", "Topic prefix", "Topics are <prefix>/<device_id>/...", _topic_prefix)
    keepalive_s: int = _f(30, "Keepalive", "Seconds between keepalive pings; the broker publishes the last "
                          "will ('offline') after 1.5x this without contact.", _positive)
    reconnect_min_s: float = _f(1.0, "Reconnect delay", "First reconnect delay; doubles up to reconnect_max_s.",
                                _positive)
    reconnect_max_s: float = _f(30.0, "Longest reconnect delay", "Upper bound of the reconnect backoff.",
                                _positive)
    tls: TlsConfig = _f(None, "TLS settings", "See tls.*", factory=TlsConfig)


@dataclass
class QueueConfig:
    path: str = _f("/var/lib/edge-face/events.db", "Event queue", "SQLite file holding events not yet "
                   "delivered to the broker.", _non_empty)
    max_events: int = _f(10000, "Queue bound", "Events kept while the broker is unreachable; beyond this the "
                         "oldest are dropped and counted.", _positive)


@dataclass
class CommandsConfig:
    enabled: bool = _f(False, "Remote commands", "Accept signed commands on <prefix>/<device_id>/command.")
    secret: str | None = _f(None, "Shared secret", "HMAC-SHA256 key (at least 16 characters).", secret=True)
    secret_file: str | None = _f(None, "Secret file", "File holding the secret instead of writing it here.")
    max_age_s: float = _f(30.0, "Command lifetime", "Commands whose timestamp is further than this from the "
                          "device clock are refused as stale.", _positive)
    nonce_path: str = _f("/var/lib/edge-face/nonces.json", "Nonce store", "Where seen nonces are kept so a "
                         "replay is refused even across restarts.", _non_empty)
    max_unlock_s: float = _f(30.0, "Longest remote unlock", "Upper bound of an unlock command's duration.",
                             _positive)


@dataclass
class RelayConfig:
    enabled: bool = _f(True, "Relay", "Drive the door relay.")
    pin: int | str = _f(17, "Relay pin", "BCM GPIO number or gpiozero pin name driving the relay.", _pin)
    active_high: bool = _f(True, "Active high", "true: pin high energizes the relay; false for active-low "
                           "relay boards.")
    unlock_s: float = _f(3.0, "Unlock duration", "Seconds the relay stays energized per unlock.", _positive)
    mock: Literal["auto", "always", "never"] = _f(
        "auto", "Mock GPIO", "auto: gpiozero's mock pins when no real GPIO exists (logged loudly); always: mock "
        "pins (demos, tests); never: refuse to start without real GPIO.")


@dataclass
class ChallengePromptConfig:
    left_led_pin: int | str | None = _f(
        None, "Left arrow LED", "GPIO of an LED on the person's LEFT as they face the door: lit while the daemon "
        "asks them to turn their head to their left (null: no LED).", _pin)
    right_led_pin: int | str | None = _f(
        None, "Right arrow LED", "GPIO of an LED on the person's RIGHT: lit while asking for a turn to the right.",
        _pin)
    buzzer_pin: int | str | None = _f(None, "Buzzer", "GPIO of an active buzzer that beeps once when a "
                                      "challenge starts (null: none).", _pin)
    beep_s: float = _f(0.2, "Beep length", "Seconds the buzzer sounds per challenge.", _positive)


@dataclass
class LivenessConfig:
    mode: Literal["off", "passive", "challenge"] = _f(
        "challenge", "Liveness mode",
        "off: identity alone unlocks (a printed photo of an enrolled person opens the door). passive: an unlock "
        "also needs 3D head motion or a blink on the same face within passive_s; people who stand still are "
        "refused. challenge: like passive, then a random head turn is asked for (LED/buzzer + MQTT prompt) "
        "and must follow within challenge_s. See docs/liveness.md for what each stops.")
    models_dir: str = _f("models/landmarks", "Landmark models", "Folder of face_landmark.tflite and "
                         "iris_landmark.tflite (made by `make models`).", _non_empty)
    threads: int = _f(1, "Threads", "CPU threads for the landmark models.", _threads)
    iris: bool = _f(False, "Iris model", "Refine the eyelids with the iris model for the blink check. Costs about "
                    "3.7 ms more per frame on one thread (docs/liveness.md); off, the face mesh's own eyelid points "
                    "are used.")
    window_s: float = _f(2.0, "Evidence window", "Seconds of the face's recent frames the checks look at.",
                         _positive)
    passive_s: float = _f(2.0, "Passive wait", "Seconds after the identity decision to wait for 3D motion or a "
                          "blink before challenging (or refusing, in passive mode).", _non_negative)
    challenge_s: float = _f(4.0, "Challenge time", "Seconds the person has to turn their head as asked.",
                            _positive)
    challenge_yaw: float = _f(
        0.25, "Challenge turn", "How far the head must turn, as the nose's offset from the cheeks' midpoint over "
        "half the face width (0.25 is about 18 degrees).", _positive)
    challenge_parallax: float = _f(
        0.04, "Challenge parallax", "The frames after the prompt must also show this much parallax (eye distances): "
        "the face mesh reads some yaw into a turned print, a real turn adds depth.", _positive)
    min_motion: float = _f(0.05, "Minimum motion", "Out-of-plane motion (eye distances) a pair of frames needs "
                           "to count as evidence of a 3D head.", _positive)
    live_parallax: float = _f(0.06, "3D threshold", "Median parallax (eye distances) of those pairs, left after the "
                              "best single homography, at or above which the face is judged 3D.", _positive)
    flat_motion: float = _f(0.08, "Flat motion", "A flat verdict needs pairs that moved at least this much (eye "
                            "distances) ...", _positive)
    flat_parallax: float = _f(0.02, "Flat threshold", "... with a median parallax below this: a flat picture, "
                              "refused with a spoof_suspected event.", _positive)
    prompt: ChallengePromptConfig = _f(None, "Challenge prompt", "See liveness.prompt.*",
                                       factory=ChallengePromptConfig)


@dataclass
class DoorContactConfig:
    enabled: bool = _f(False, "Door contact", "Read a reed switch reporting the door open or closed.")
    pin: int | str = _f(27, "Contact pin", "BCM GPIO number or pin name of the reed switch.", _pin)
    pull_up: bool = _f(True, "Pull-up", "Use the internal pull-up (switch to ground).")
    closed_when_active: bool = _f(True, "Closed when active", "true: the input is active while the door is "
                                  "closed (normally-open reed switch held shut by the magnet).")
    held_open_s: float = _f(30.0, "Held-open alarm", "Report 'held_open' when the door stays open longer.",
                            _positive)


@dataclass
class HealthConfig:
    interval_s: float = _f(60.0, "Health interval", "Seconds between health messages.", _positive)


@dataclass
class HomeAssistantConfig:
    enabled: bool = _f(True, "Home Assistant discovery", "Publish retained MQTT discovery messages so Home "
                       "Assistant shows the door lock and the last-person / unknown-face sensors by itself.")
    discovery_prefix: str = _f("homeassistant", "Discovery prefix", "Home Assistant's MQTT discovery prefix.",
                               _topic_prefix)
    unlock_command: bool = _f(False, "Unlock from Home Assistant", "Act on LOCK/UNLOCK from Home Assistant on "
                              "<prefix>/<device_id>/ha/lock/set (unsigned: restrict it with broker ACLs). UNLOCK "
                              "is one relay.unlock_s pulse.")


@dataclass
class UnknownFacesConfig:
    enabled: bool = _f(False, "Keep unknown faces", "Store a JPEG crop of the face of every 'unknown' event, "
                       "named by the event id, for review and enrollment (off: strangers' faces are never kept).")
    path: str | None = _f(None, "Crop folder", "Folder of the crops, created private (0700) (null: "
                          "unknown_faces beside queue.path).")
    max_days: float | None = _f(30.0, "Keep days", "Crops older than this many days are deleted (null: no "
                                "age limit).", _positive)
    max_mb: float | None = _f(100.0, "Size cap", "Total size of the crops in MiB; the oldest are deleted "
                              "first (null: no size limit).", _positive)

    def resolved_path(self, queue_path: str) -> Path:
        """The configured folder, or unknown_faces in the queue's folder."""
        return Path(self.path) if self.path else Path(queue_path).parent / "unknown_faces"


@dataclass
class AccessLogConfig:
    enabled: bool = _f(True, "Access log", "Record every decision (unlock, denied, unknown, spoof, remote command, "
                       "reload) in a local SQLite file.")
    path: str | None = _f(None, "Access log file", "SQLite file of the access log (null: access.db beside "
                          "queue.path).")
    max_days: float | None = _f(90.0, "Keep days", "Entries older than this many days are deleted (null: no "
                                "age limit).", _positive)
    max_rows: int | None = _f(100000, "Keep entries", "At most this many entries are kept, oldest deleted "
                              "first (null: no count limit).", _positive)

    def resolved_path(self, queue_path: str) -> Path:
        """The configured file, or access.db in the queue's folder."""
        return Path(self.path) if self.path else Path(queue_path).parent / "access.db"


@dataclass
class MetricsConfig:
    enabled: bool = _f(False, "Metrics endpoint", "Serve Prometheus metrics over HTTP at /metrics.")
    bind: str = _f("127.0.0.1", "Metrics address", "Address the endpoint listens on (0.0.0.0: every "
                   "interface).", _non_empty)
    port: int = _f(9101, "Metrics port", "TCP port of the endpoint.", _port)


@dataclass
class LiveViewConfig:
    enabled: bool = _f(False, "Live view", "Serve a local web page with the camera stream (face boxes and "
                       "names drawn), the last events and health. Needs live_view.token or token_file.")
    bind: str = _f("127.0.0.1", "Live view address", "Address the page listens on (0.0.0.0: every interface; "
                   "plain HTTP, so only on a trusted network).", _non_empty)
    port: int = _f(8088, "Live view port", "TCP port of the page.", _port)
    token: str | None = _f(None, "Access token", "Token the browser must send (?token= or Authorization: "
                           "Bearer), at least 16 characters.", secret=True)
    token_file: str | None = _f(None, "Token file", "File holding the token instead of writing it here.")
    max_fps: float = _f(5.0, "Stream rate", "At most this many frames per second per viewer (JPEG encoding "
                        "costs CPU on a Raspberry Pi).", _positive)


@dataclass
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _f("INFO", "Log level", "Verbosity on stderr/journal.")


@dataclass
class Config:
    device_id: str = _f("door-1", "Device id", "Name of this device in topics and events.", _name)
    camera: CameraConfig = _f(None, "Camera", "See camera.*", factory=CameraConfig)
    model: ModelConfig = _f(None, "Model", "See model.*", factory=ModelConfig)
    gallery: GalleryConfig = _f(None, "Gallery", "See gallery.*", factory=GalleryConfig)
    decision: DecisionConfig = _f(None, "Decision", "See decision.*", factory=DecisionConfig)
    mqtt: MqttConfig = _f(None, "MQTT", "See mqtt.*", factory=MqttConfig)
    queue: QueueConfig = _f(None, "Queue", "See queue.*", factory=QueueConfig)
    commands: CommandsConfig = _f(None, "Commands", "See commands.*", factory=CommandsConfig)
    relay: RelayConfig = _f(None, "Relay", "See relay.*", factory=RelayConfig)
    door_contact: DoorContactConfig = _f(None, "Door contact", "See door_contact.*", factory=DoorContactConfig)
    liveness: LivenessConfig = _f(None, "Liveness", "See liveness.*", factory=LivenessConfig)
    health: HealthConfig = _f(None, "Health", "See health.*", factory=HealthConfig)
    homeassistant: HomeAssistantConfig = _f(None, "Home Assistant", "See homeassistant.*",
                                            factory=HomeAssistantConfig)
    unknown_faces: UnknownFacesConfig = _f(None, "Unknown faces", "See unknown_faces.*",
                                           factory=UnknownFacesConfig)
    logging: LoggingConfig = _f(None, "Logging", "See logging.*", factory=LoggingConfig)
    access_log: AccessLogConfig = _f(None, "Access log", "See access_log.*", factory=AccessLogConfig)
    metrics: MetricsConfig = _f(None, "Metrics", "See metrics.*", factory=MetricsConfig)
    live_view: LiveViewConfig = _f(None, "Live view", "See live_view.*", factory=LiveViewConfig)

    def command_secret(self) -> bytes:
        """The HMAC key, from `commands.secret` or `commands.secret_file`."""
        if self.commands.secret:
            return self.commands.secret.encode()
        assert self.commands.secret_file is not None
        try:
            return Path(self.commands.secret_file).read_text().strip().encode()
        except OSError as exc:
            raise ConfigError(
                f"commands.secret_file: cannot read {self.commands.secret_file} ({exc.strerror})") from None

    def live_view_token(self) -> str:
        """The live view's access token, from `live_view.token` or `live_view.token_file`."""
        if self.live_view.token:
            return self.live_view.token
        assert self.live_view.token_file is not None
        try:
            return Path(self.live_view.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"live_view.token_file: cannot read {self.live_view.token_file} ({exc.strerror})") from None


# --- conversion ------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) if a is not type(None) else "null" for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; returns the converted value or raises ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: must be a string, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(item, item_tp, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping, got {value!r}")
        key_tp, item_tp = typing.get_args(tp)
        return {_convert(k, key_tp, f"{key} key"): _convert(v, item_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys and checking every value."""
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        dotted = ", ".join(f"{prefix}.{k}" if prefix else k for k in unknown)
        raise ConfigError(f"{dotted}: unknown key (known keys: {', '.join(fields)})")
    values = {}
    for name, fdef in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            continue
        value = _convert(data[name], hints[name], key)
        check = fdef.metadata.get("check")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"{key}: {problem}")
        values[name] = value
    return cls(**values)


def parse_time(text: str, key: str) -> dtime | None:
    """'HH:MM' -> time; '24:00' -> None meaning end of day."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
    if not match:
        raise ConfigError(f"{key}: must be a time HH:MM, got {text!r}")
    hour, minute = int(match.group(1)), int(match.group(2))
    if (hour, minute) == (24, 0):
        return None
    if hour > 23 or minute > 59:
        raise ConfigError(f"{key}: must be a time 00:00-24:00, got {text!r}")
    return dtime(hour, minute)


def _cross_checks(config: Config) -> None:
    """Rules that involve more than one field."""
    d = config.decision
    if d.votes_k > d.votes_n:
        raise ConfigError(f"decision.votes_k: must be <= decision.votes_n ({d.votes_n}), got {d.votes_k}")
    if d.timezone is not None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(d.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"decision.timezone: unknown time zone {d.timezone!r}") from None
    for person, windows in d.schedules.items():
        for i, window in enumerate(windows):
            key = f"decision.schedules.{person}[{i}]"
            if not window.days:
                raise ConfigError(f"{key}.days: must list at least one weekday")
            for day in window.days:
                if day not in WEEKDAYS:
                    raise ConfigError(f"{key}.days: {day!r} is not one of {', '.join(WEEKDAYS)}")
            start = parse_time(window.start, f"{key}.start")
            parse_time(window.end, f"{key}.end")
            if start is None:
                raise ConfigError(f"{key}.start: must be before 24:00")
            if window.start == window.end:
                raise ConfigError(f"{key}.end: must differ from start ({window.start})")
    c = config.camera
    if c.retry_max_s < c.retry_s:
        raise ConfigError(f"camera.retry_max_s: must be >= camera.retry_s ({c.retry_s}), got {c.retry_max_s}")
    for name in ("width", "height"):
        value = getattr(c, name)
        if value is not None and value <= 0:
            raise ConfigError(f"camera.{name}: must be > 0 or null, got {value}")
    if isinstance(c.source, int) and c.source < 0:
        raise ConfigError(f"camera.source: a device index must be >= 0, got {c.source}")
    if isinstance(c.source, str) and not c.source.strip():
        raise ConfigError("camera.source: must not be empty")
    m = config.mqtt
    if m.reconnect_max_s < m.reconnect_min_s:
        raise ConfigError(f"mqtt.reconnect_max_s: must be >= mqtt.reconnect_min_s ({m.reconnect_min_s})")
    if m.password is not None and m.username is None:
        raise ConfigError("mqtt.password: set mqtt.username too (a password alone is never sent)")
    if (m.tls.cert_file is None) != (m.tls.key_file is None):
        raise ConfigError("mqtt.tls.key_file: cert_file and key_file must be given together")
    if m.tls.enabled:
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(m.tls, name)
            if value is not None and not Path(value).is_file():
                raise ConfigError(f"mqtt.tls.{name}: no such file {value}")
    cmd = config.commands
    if cmd.enabled:
        if cmd.secret and cmd.secret_file:
            raise ConfigError("commands.secret_file: give either commands.secret or commands.secret_file, not both")
        if not cmd.secret and not cmd.secret_file:
            raise ConfigError("commands.secret: required when commands.enabled is true")
        if len(config.command_secret()) < 16:
            raise ConfigError("commands.secret: must be at least 16 characters")
    lv = config.live_view
    if lv.enabled:
        if lv.token and lv.token_file:
            raise ConfigError("live_view.token_file: give either live_view.token or live_view.token_file, not both")
        if not lv.token and not lv.token_file:
            raise ConfigError("live_view.token: required when live_view.enabled is true")
        if len(config.live_view_token()) < 16:
            raise ConfigError("live_view.token: must be at least 16 characters")
    if config.door_contact.enabled and config.relay.enabled and config.door_contact.pin == config.relay.pin:
        raise ConfigError(f"door_contact.pin: must differ from relay.pin ({config.relay.pin})")
    lc = config.liveness
    if lc.flat_parallax > lc.live_parallax:
        raise ConfigError(f"liveness.flat_parallax: must be <= liveness.live_parallax ({lc.live_parallax})")
    used = {"relay.pin": config.relay.pin if config.relay.enabled else None,
            "door_contact.pin": config.door_contact.pin if config.door_contact.enabled else None}
    for name in ("left_led_pin", "right_led_pin", "buzzer_pin"):
        pin = getattr(lc.prompt, name)
        if pin is None:
            continue
        clash = next((key for key, other in used.items() if other is not None and other == pin), None)
        if clash:
            raise ConfigError(f"liveness.prompt.{name}: pin {pin} is already used by {clash}")
        used[f"liveness.prompt.{name}"] = pin


def config_from_dict(data: Any) -> Config:
    """Validate a parsed mapping into a Config (raises ConfigError naming the key)."""
    if isinstance(data, dict) and "liveness" in data:
        # Shorthand `liveness: passive`; YAML reads a bare `off` as false.
        short = data["liveness"]
        if short is False or isinstance(short, str):
            data = {**data, "liveness": {"mode": "off" if short is False else short}}
    config = _build(Config, data, "")
    _cross_checks(config)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def iter_fields(cls: type = Config, prefix: str = "") -> typing.Iterator[tuple[str, dataclasses.Field]]:
    """Every leaf option as (dotted key, field); used by tests and docs to check coverage."""
    hints = typing.get_type_hints(cls)
    for fdef in dataclasses.fields(cls):
        key = f"{prefix}.{fdef.name}" if prefix else fdef.name
        tp = hints[fdef.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, key)
        else:
            yield key, fdef
