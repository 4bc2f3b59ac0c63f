"""The stream events: plain slotted classes that behave as frozen, keyword-only dataclasses of
the same fields would (equality, hash, repr), built by keyword anywhere and by position for the
events of every request (the parsers' hot paths)."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revproxy.proto import events
from revproxy.proto.events import (
    ConnectionClosed,
    DataReceived,
    GoAwayReceived,
    InformationalReceived,
    MessageEnded,
    PingAcknowledged,
    RequestReceived,
    ResponseReceived,
    StreamReset,
    WindowUpdated,
)

# Each event's fields in order, with their defaults (the dataclasses these classes replaced).
_NO = dataclasses.MISSING
FIELDS: dict[type, list[tuple[str, object]]] = {
    RequestReceived: [
        ("stream_id", _NO),
        ("method", _NO),
        ("target", _NO),
        ("authority", _NO),
        ("headers", _NO),
        ("http_version", b"1.1"),
        ("ended", False),
        ("protocol", b""),
    ],
    InformationalReceived: [("stream_id", _NO), ("status", _NO), ("headers", _NO)],
    ResponseReceived: [
        ("stream_id", _NO),
        ("status", _NO),
        ("headers", _NO),
        ("reason", b""),
        ("http_version", b"1.1"),
        ("ended", False),
    ],
    DataReceived: [("stream_id", _NO), ("data", _NO)],
    MessageEnded: [("stream_id", _NO), ("trailers", _NO)],
    ConnectionClosed: [("stream_id", 0)],
    StreamReset: [("stream_id", _NO), ("error_code", _NO), ("remote", True), ("reason", "")],
    WindowUpdated: [("stream_id", _NO)],
    GoAwayReceived: [("stream_id", 0), ("last_stream_id", _NO), ("error_code", _NO)],
    PingAcknowledged: [("stream_id", 0), ("data", _NO)],
}
PER_REQUEST = (RequestReceived, InformationalReceived, ResponseReceived, DataReceived, MessageEnded)
ALL = tuple(FIELDS)


def _reference(cls: type) -> type:
    """The frozen, keyword-only dataclass ``cls`` stands for (same name, fields, defaults)."""
    spec: list[Any] = []
    for name, default in FIELDS[cls]:
        if default is _NO:
            spec.append((name, object))
        else:
            spec.append((name, object, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(cls.__name__, spec, frozen=True, kw_only=True, slots=True)


REFERENCES = {cls: _reference(cls) for cls in ALL}

_headers = st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=8)), max_size=3)
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "stream_id": st.integers(0, 2**31 - 1),
    "last_stream_id": st.integers(0, 2**31 - 1),
    "status": st.integers(100, 599),
    "error_code": st.integers(0, 15),
    "method": st.sampled_from([b"GET", b"POST", b"CONNECT"]),
    "target": st.binary(max_size=8),
    "authority": st.binary(max_size=8),
    "headers": _headers,
    "trailers": _headers,
    "http_version": st.sampled_from([b"1.0", b"1.1", b"2"]),
    "ended": st.booleans(),
    "protocol": st.sampled_from([b"", b"websocket"]),
    "data": st.binary(max_size=8),
    "remote": st.booleans(),
}


@st.composite
def _fields(draw: st.DrawFn, cls: type) -> dict[str, Any]:
    """Keyword arguments for ``cls``: every required field, each default one or not."""
    out = {}
    for name, default in FIELDS[cls]:
        if default is _NO or draw(st.booleans()):
            if name == "reason":  # a reason phrase (bytes), or why we reset a stream (text)
                value = st.binary(max_size=8) if cls is ResponseReceived else st.text(max_size=8)
            else:
                value = _VALUES[name]
            out[name] = draw(value)
    return out


_event_args = st.sampled_from(ALL).flatmap(lambda cls: st.tuples(st.just(cls), _fields(cls)))


def test_the_fields_are_the_slots_in_order() -> None:
    for cls in ALL:
        names = tuple(name for name, _ in FIELDS[cls])
        assert vars(cls)["__slots__"] == names
        assert not hasattr(cls(**{n: 0 for n, d in FIELDS[cls] if d is _NO}), "__dict__")


# A draw that meets a collection pause on a loaded machine is not slow input generation.
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_event_args, _event_args)
def test_events_behave_as_the_frozen_dataclasses_they_replaced(
    one: tuple[type, dict[str, Any]], two: tuple[type, dict[str, Any]]
) -> None:
    (cls_a, kw_a), (cls_b, kw_b) = one, two
    a, b = cls_a(**kw_a), cls_b(**kw_b)
    ref_a, ref_b = REFERENCES[cls_a](**kw_a), REFERENCES[cls_b](**kw_b)
    # Every field as given, defaults where not.
    for name, _ in FIELDS[cls_a]:
        assert getattr(a, name) == getattr(ref_a, name)
    assert repr(a) == repr(ref_a)
    assert (a == b) == (ref_a == ref_b)
    assert (a != b) == (ref_a != ref_b)
    again = cls_a(**kw_a)
    assert a == again
    assert (a != again) is False
    try:
        expected: object = hash(ref_a)
    except TypeError:
        expected = TypeError
    if expected is TypeError:
        with pytest.raises(TypeError):
            hash(a)
    else:
        assert hash(a) == expected == hash(again)


@given(st.sampled_from(PER_REQUEST).flatmap(lambda cls: st.tuples(st.just(cls), _fields(cls))))
def test_the_events_of_every_request_are_built_by_position_as_by_keyword(
    case: tuple[type, dict[str, Any]],
) -> None:
    cls, kw = case
    names = [name for name, _ in FIELDS[cls]]
    given_up_to = max(names.index(name) for name in kw) + 1
    # Defaults filled in before the last field given.
    args = [kw.get(name, default) for name, default in FIELDS[cls][:given_up_to]]
    built = cls(*args)
    assert built == cls(**kw)
    assert repr(built) == repr(cls(**kw))


@pytest.mark.parametrize("cls", [c for c in ALL if c not in PER_REQUEST])
def test_the_other_events_take_keywords_only(cls: type) -> None:
    with pytest.raises(TypeError):
        cls(*[1 for _ in FIELDS[cls]])


def test_events_of_other_classes_with_equal_fields_differ() -> None:
    assert DataReceived(1, b"x") != PingAcknowledged(stream_id=1, data=b"x")
    assert WindowUpdated(stream_id=0) != ConnectionClosed(stream_id=0)
    assert DataReceived(1, b"x") != (1, b"x")
    assert DataReceived(1, b"x").__eq__((1, b"x")) is NotImplemented


def test_no_other_attribute_can_be_set() -> None:
    ev = DataReceived(1, b"x")
    with pytest.raises(AttributeError):
        ev.other = 1  # type: ignore[attr-defined]


def test_events_survive_pickling() -> None:
    for ev in (
        RequestReceived(1, b"GET", b"/", b"h", [(b"host", b"h")], b"2", True, b"websocket"),
        GoAwayReceived(last_stream_id=5, error_code=0),
        StreamReset(stream_id=3, error_code=8, remote=False, reason="why"),
    ):
        assert pickle.loads(pickle.dumps(ev)) == ev


def test_the_event_union_names_every_event() -> None:
    assert set(events.Event.__args__) == set(ALL)


# Two different values of each field, by name (a stream reset's reason is text, a reason
# phrase bytes).
_TWO: dict[str, tuple[object, object]] = {
    "stream_id": (1, 2),
    "last_stream_id": (1, 2),
    "status": (200, 404),
    "error_code": (0, 8),
    "method": (b"GET", b"PUT"),
    "target": (b"/", b"/x"),
    "authority": (b"a", b"b"),
    "headers": ([(b"a", b"b")], [(b"a", b"c")]),
    "trailers": ([(b"a", b"b")], [(b"a", b"c")]),
    "http_version": (b"1.1", b"2"),
    "ended": (False, True),
    "protocol": (b"", b"websocket"),
    "data": (b"x", b"y"),
    "remote": (True, False),
}


@pytest.mark.parametrize("cls", ALL)
def test_every_field_counts_for_equality_and_repr(cls: type) -> None:
    def two(name: str) -> tuple[object, object]:
        if name == "reason":
            return (b"OK", b"No") if cls is ResponseReceived else ("a", "b")
        return _TWO[name]

    base = {name: two(name)[0] for name, _ in FIELDS[cls]}
    for name, _ in FIELDS[cls]:
        changed = {**base, name: two(name)[1]}
        assert cls(**base) != cls(**changed)
        assert repr(cls(**base)) != repr(cls(**changed))
        assert repr(cls(**changed)) == repr(REFERENCES[cls](**changed))
