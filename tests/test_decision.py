"""K-of-N voting, cooldown, unknown rate limit and schedules (pure logic, explicit clock)."""

from __future__ import annotations

from datetime import datetime

import pytest

from edge.config import ScheduleWindow, config_from_dict
from edge.decision import DecisionEngine, Observation, Window

BOX = (10.0, 20.0, 100.0, 120.0)
MONDAY_NOON = datetime(2024, 6, 3, 12, 0)


def obs(name: str | None, distance: float = 0.5, box: tuple[float, float, float, float] = BOX) -> Observation:
    return Observation(name, distance, box)


def test_needs_k_of_n_votes() -> None:
    engine = DecisionEngine(k=2, n=3, window_s=2.0, cooldown_s=10.0)
    assert engine.update(0.0, MONDAY_NOON, [obs("ann")]) == []
    assert engine.update(0.1, MONDAY_NOON, []) == []
    decisions = engine.update(0.2, MONDAY_NOON, [obs("ann", 0.4)])
    assert [(d.action, d.name, d.votes, d.frames, d.required) for d in decisions] == [("unlock", "ann", 2, 3, 2)]
    assert decisions[0].distance == 0.4


def test_votes_older_than_n_frames_do_not_count() -> None:
    engine = DecisionEngine(k=2, n=3, window_s=10.0)
    engine.update(0.0, MONDAY_NOON, [obs("ann")])
    engine.update(0.1, MONDAY_NOON, [])
    engine.update(0.2, MONDAY_NOON, [])
    assert engine.update(0.3, MONDAY_NOON, [obs("ann")]) == []  # the first vote left the last 3 frames


def test_votes_older_than_window_do_not_count() -> None:
    engine = DecisionEngine(k=2, n=3, window_s=1.0)
    engine.update(0.0, MONDAY_NOON, [obs("ann")])
    assert engine.update(1.5, MONDAY_NOON, [obs("ann")]) == []
    assert engine.update(2.0, MONDAY_NOON, [obs("ann")])[0].action == "unlock"


def test_votes_must_be_for_the_same_person() -> None:
    engine = DecisionEngine(k=2, n=3)
    engine.update(0.0, MONDAY_NOON, [obs("ann")])
    assert engine.update(0.1, MONDAY_NOON, [obs("bob")]) == []


def test_cooldown_gives_one_event_per_visit() -> None:
    engine = DecisionEngine(k=2, n=3, window_s=2.0, cooldown_s=5.0)
    actions = [engine.update(t / 10, MONDAY_NOON, [obs("ann")]) for t in range(40)]
    assert sum(len(a) for a in actions) == 1
    later = [engine.update(5.1 + t / 10, MONDAY_NOON, [obs("ann")]) for t in range(2)]
    assert sum(len(a) for a in later) == 1


def test_unknown_never_unlocks_and_is_rate_limited() -> None:
    engine = DecisionEngine(k=2, n=3, unknown_interval_s=30.0)
    decisions = [d for t in range(50) for d in engine.update(t / 10, MONDAY_NOON, [obs(None, 1.3)])]
    assert [d.action for d in decisions] == ["unknown"]
    assert decisions[0].name is None
    more = [d for t in range(5) for d in engine.update(31 + t / 10, MONDAY_NOON, [obs(None, 1.3)])]
    assert [d.action for d in more] == ["unknown"]


def test_two_people_at_once() -> None:
    engine = DecisionEngine(k=2, n=3)
    engine.update(0.0, MONDAY_NOON, [obs("ann", 0.5), obs("bob", 0.3), obs(None, 1.2, (0, 0, 5, 5))])
    decisions = engine.update(0.1, MONDAY_NOON, [obs("ann", 0.5), obs("bob", 0.3), obs(None, 1.2, (0, 0, 5, 5))])
    assert [(d.action, d.name) for d in decisions] == [("unlock", "bob"), ("unlock", "ann"), ("unknown", None)]


def test_schedule_outside_window_is_denied() -> None:
    config = config_from_dict({"decision": {"schedules": {"ann": [{"days": ["mon"], "start": "08:00",
                                                                    "end": "10:00"}]}}}).decision
    engine = DecisionEngine.from_config(config)
    engine.update(0.0, MONDAY_NOON, [obs("ann")])
    assert engine.update(0.1, MONDAY_NOON, [obs("ann")])[0].action == "denied"
    engine.update(20.0, datetime(2024, 6, 3, 9, 0), [obs("ann")])
    assert engine.update(20.1, datetime(2024, 6, 3, 9, 0), [obs("ann")])[0].action == "unlock"


def test_default_access_never() -> None:
    engine = DecisionEngine(default_access="never")
    engine.update(0.0, MONDAY_NOON, [obs("ann")])
    assert engine.update(0.1, MONDAY_NOON, [obs("ann")])[0].action == "denied"


@pytest.mark.parametrize(
    ("when", "allowed"),
    [
        (datetime(2024, 6, 8, 23, 0), True),   # saturday evening
        (datetime(2024, 6, 9, 5, 59), True),   # sunday early morning, after saturday night
        (datetime(2024, 6, 9, 6, 0), False),   # end is exclusive
        (datetime(2024, 6, 10, 3, 0), True),   # monday early morning, after sunday night
        (datetime(2024, 6, 10, 23, 0), False),  # monday evening: not a listed day
        (datetime(2024, 6, 8, 21, 59), False),
    ],
)
def test_window_past_midnight(when: datetime, allowed: bool) -> None:
    window = Window.from_config(ScheduleWindow(days=["sat", "sun"], start="22:00", end="06:00"))
    assert window.allows(when) is allowed


def test_window_until_midnight() -> None:
    window = Window.from_config(ScheduleWindow(days=["mon"], start="18:00", end="24:00"))
    assert window.allows(datetime(2024, 6, 3, 23, 59))
    assert not window.allows(datetime(2024, 6, 4, 0, 1))


def test_k_larger_than_n_refused() -> None:
    with pytest.raises(ValueError):
        DecisionEngine(k=4, n=3)
