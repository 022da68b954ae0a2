"""The packed raw-event timeline: what goes in comes out, in order."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from app.model.vocabulary import EVENT_NAMES, PAYLOAD_NUMBERS, PAYLOAD_TEXTS
from app.storage import timeline

START = dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)
payloads = st.fixed_dictionaries(
    {},
    optional={
        **{name: st.floats(allow_nan=False, allow_infinity=False) for name in PAYLOAD_NUMBERS},
        **{name: st.text(max_size=limit) for name, limit in PAYLOAD_TEXTS},
    },
)
events = st.lists(
    st.tuples(st.integers(-86_400_000, 86_400_000 * 20), st.sampled_from(EVENT_NAMES), payloads),
    max_size=40,
)


@settings(deadline=None)  # pure, but may share the machine with a loaded database
@given(events, events)
def test_what_is_appended_reads_back_in_order(first: list, second: list) -> None:  # type: ignore[type-arg]
    def at(ms: int) -> dt.datetime:
        return START + dt.timedelta(milliseconds=ms)

    blob = timeline.encode(((at(ms), n, p) for ms, n, p in first), START) + timeline.encode(
        ((at(ms), n, p) for ms, n, p in second), START
    )
    assert timeline.decode(blob, START) == [(at(ms), n, p) for ms, n, p in first + second]


def test_milliseconds_round_and_outside_names_are_not_stored() -> None:
    blob = timeline.encode(
        [
            (START + dt.timedelta(microseconds=1500), "play", {"from": 1.0}),
            (START, "not-an-event", None),
            (START, "pause", {"to": 2.0, "unknown": 3.0}),
        ],
        START,
    )
    assert timeline.decode(blob, START) == [
        (START + dt.timedelta(milliseconds=2), "play", {"from": 1.0}),
        (START, "pause", {"to": 2.0}),
    ]
    assert len(blob) == (6 + 9) * 2  # head + one number each
    assert timeline.decode(None, START) == [] and timeline.decode(b"", START) == []
