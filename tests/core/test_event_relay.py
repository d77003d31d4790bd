"""events.relay: transform or drop a run's events, keep its return value, close it with the relay."""

from __future__ import annotations

from tlstudio.core.events import drive, relay


def test_relay_transforms_drops_and_returns():
    def run():
        yield 1
        yield 2
        yield 3
        return "done"

    seen = []
    assert drive(relay(run(), lambda ev: None if ev == 2 else ev * 10), seen.append) == "done"
    assert seen == [10, 30]


def test_closing_the_relay_runs_the_inner_clean_up_at_once():
    cleaned = []

    def run():
        try:
            yield 1
            yield 2
        finally:
            cleaned.append(True)

    outer = relay(run(), lambda ev: ev)
    assert next(outer) == 1
    outer.close()  # a stopped job: the engine's finally (writer, lock) must run now
    assert cleaned == [True]
