"""The relay on gpiozero's mock pins: pulse length, fail-secure states, door contact."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from edge.config import DoorContactConfig, RelayConfig
from edge.relay import DoorContact, DoorRelay


class PinRecorder:
    """Timestamps every state change of a mock pin (gpiozero MockPin keeps the state in `state`)."""

    def __init__(self, pin) -> None:
        self.pin = pin
        self.changes: list[tuple[float, int]] = []
        original = type(pin)._set_state
        recorder = self

        def patched(self_pin, value) -> None:
            original(self_pin, value)
            if self_pin is recorder.pin:
                recorder.changes.append((time.monotonic(), int(self_pin.state)))

        self._restore = (type(pin), original)
        type(pin)._set_state = patched

    def close(self) -> None:
        cls, original = self._restore
        cls._set_state = original

    def pulses(self, active: int = 1) -> list[float]:
        result, start = [], None
        for t, state in self.changes:
            if state == active and start is None:
                start = t
            elif state != active and start is not None:
                result.append(t - start)
                start = None
        return result


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


def test_locked_at_start_and_one_pulse_of_configured_length(factory: MockFactory) -> None:
    relay = DoorRelay(RelayConfig(pin=17, unlock_s=0.3), pin_factory=factory)
    pin = factory.pin(17)
    assert pin.state == 0 and not relay.unlocked
    rec = PinRecorder(pin)
    try:
        relay.unlock(reason="test")
        assert pin.state == 1
        time.sleep(0.6)
        assert pin.state == 0
        pulses = rec.pulses()
        assert len(pulses) == 1 and 0.28 <= pulses[0] <= 0.4, pulses
    finally:
        rec.close()
        relay.close()


def test_active_low_board(factory: MockFactory) -> None:
    relay = DoorRelay(RelayConfig(pin=22, active_high=False, unlock_s=0.2), pin_factory=factory)
    pin = factory.pin(22)
    assert pin.state == 1  # active-low: high = relay off = locked
    relay.unlock()
    assert pin.state == 0
    relay.lock("test")
    assert pin.state == 1
    relay.close()


def test_close_during_pulse_locks_and_ignores_later_unlocks(factory: MockFactory) -> None:
    changes = []
    relay = DoorRelay(RelayConfig(pin=17, unlock_s=5), pin_factory=factory, on_change=lambda u, r: changes.append(u))
    relay.unlock()
    relay.close()
    assert factory.pin(17).state == 0
    relay.unlock()
    assert factory.pin(17).state == 0
    assert changes == [True, False]


def test_failure_to_energize_leaves_it_locked(factory: MockFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = DoorRelay(RelayConfig(pin=17, unlock_s=5), pin_factory=factory)

    def broken() -> None:
        raise OSError("GPIO gone")

    monkeypatch.setattr(relay.device, "on", broken)
    relay.unlock()
    assert factory.pin(17).state == 0 and not relay.unlocked
    relay.close()


def test_door_contact_reports_and_held_open(factory: MockFactory) -> None:
    states: list[str] = []
    contact = DoorContact(DoorContactConfig(enabled=True, pin=27, pull_up=True, held_open_s=0.3), states.append,
                          pin_factory=factory)
    pin = factory.pin(27)
    pin.drive_low()  # pull-up + switch to ground closed = active = door closed
    time.sleep(0.1)
    assert contact.state == "closed"
    pin.drive_high()
    time.sleep(0.5)
    assert states[-2:] == ["open", "held_open"]
    pin.drive_low()
    time.sleep(0.1)
    assert states[-1] == "closed"
    contact.close()
