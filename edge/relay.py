"""The door relay and the optional door contact, through gpiozero, failing secure.

The relay is de-energized ("locked") at start, after every pulse, on any error while driving it, on
close() (SIGTERM/SIGINT go through close()), and from an atexit hook. A process killed with
SIGKILL cannot run code, so the last line of defence is the wiring (docs/daemon.md): a fail-secure
strike on the relay's normally-open contact, driven from a pin whose power-on pull keeps the
relay off while no process drives the pin.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from edge.config import DoorContactConfig, RelayConfig
from edge.errors import ConfigError

log = logging.getLogger("edge.relay")


def choose_pin_factory(mode: str) -> Any:
    """A gpiozero pin factory: the real one, or MockFactory when asked / when no GPIO exists here."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    if mode == "always":
        return MockFactory()
    if Device.pin_factory is not None:
        return Device.pin_factory
    try:
        with warnings.catch_warnings():  # one "falling back from ..." warning per backend; we log our own
            warnings.simplefilter("ignore")
            return Device._default_pin_factory()
    except Exception as exc:  # gpiozero raises BadPinFactory plus whatever the backends raise
        if mode == "never":
            raise ConfigError(f"relay.mock: 'never' but no GPIO is usable here ({exc})") from None
        log.warning("NO REAL GPIO (%s): using gpiozero mock pins; the door will not actually open", exc)
        return MockFactory()


class DoorRelay:
    """One output pin; `unlock(seconds)` energizes it for a pulse, everything else locks."""

    def __init__(self, config: RelayConfig, pin_factory: Any = None,
                 on_change: Callable[[bool, str], None] | None = None) -> None:
        from gpiozero import OutputDevice

        self.config = config
        self.on_change = on_change
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._closed = False
        self.pulses = 0
        self.device = OutputDevice(config.pin, active_high=config.active_high, initial_value=False,
                                   pin_factory=pin_factory)
        atexit.register(self.close)

    @property
    def unlocked(self) -> bool:
        return bool(self.device.value)

    def unlock(self, seconds: float | None = None, reason: str = "") -> None:
        """Energize for `seconds` (default: relay.unlock_s); a new unlock restarts the pulse."""
        duration = self.config.unlock_s if seconds is None else seconds
        with self._lock:
            if self._closed:
                return
            if self._timer is not None:
                self._timer.cancel()
            try:
                self.device.on()
            except Exception:
                log.exception("relay: failed to energize; locking")
                self.lock("error")
                return
            self.pulses += 1
            self._timer = threading.Timer(duration, self.lock, args=("pulse ended",))
            self._timer.daemon = True
            self._timer.start()
        log.info("door unlocked for %.1f s (%s)", duration, reason)
        if self.on_change:
            self.on_change(True, reason)

    def lock(self, reason: str = "") -> None:
        """De-energize now; safe to call from any thread, any number of times."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            was = False
            try:
                was = bool(self.device.value)
                self.device.off()
            except Exception:
                log.exception("relay: failed to de-energize")
        if was:
            log.info("door locked (%s)", reason)
            if self.on_change:
                self.on_change(False, reason)

    def close(self) -> None:
        """Lock and release the pin."""
        with self._lock:
            if self._closed:
                return
            self.lock("shutdown")
            self._closed = True
            try:
                self.device.close()
            except Exception:
                log.exception("relay: closing the pin failed")
        atexit.unregister(self.close)


class DoorContact:
    """A reed switch: reports 'open'/'closed' and 'held_open' when open longer than allowed."""

    def __init__(self, config: DoorContactConfig, on_state: Callable[[str], None], pin_factory: Any = None) -> None:
        from gpiozero import DigitalInputDevice

        self.config = config
        self.on_state = on_state
        self._timer: threading.Timer | None = None
        self._opened_at: float | None = None
        self.device = DigitalInputDevice(config.pin, pull_up=config.pull_up, bounce_time=0.05, pin_factory=pin_factory)
        self.device.when_activated = self._changed
        self.device.when_deactivated = self._changed

    @property
    def state(self) -> str:
        closed = bool(self.device.value) == self.config.closed_when_active
        return "closed" if closed else "open"

    def _changed(self) -> None:
        state = self.state
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if state == "open":
            self._opened_at = time.monotonic()
            self._timer = threading.Timer(self.config.held_open_s, self._held_open)
            self._timer.daemon = True
            self._timer.start()
        else:
            self._opened_at = None
        self.on_state(state)

    def _held_open(self) -> None:
        if self.state == "open":
            self.on_state("held_open")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.device.close()
