"""Property-based fuzzing of the event validator against the published JSON Schema.

Over 100,000 generated inputs (events valid, near-valid with one field changed, of wrong types,
with unicode, huge or negative numbers, missing and extra fields, timestamps at the bounds; JSON
objects of any shape; raw and mangled bytes), two properties:

- ``EventValidator.parse`` raises nothing but :class:`InvalidEvent`;
- it accepts nothing that ``schemas/event.v1.json`` rejects, and it rejects nothing the schema
  accepts, except for what the schema cannot know (the clock, the catalogue, the byte limit).

Each Hypothesis example carries a batch of inputs: Hypothesis' per-example cost is far above the
validator's, so the batches keep the file well under two minutes on 2 cores. Generation is
derandomized (the same inputs on every run) and nothing is stored between runs. A disagreement
found here is a bug; its minimal input belongs in the table of ``test_schema.py``.
"""
from __future__ import annotations

import json
import os
from datetime import datetime

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from stream.core.schema import EVENT_TYPES, FIELDS, MAX_ID, MAX_QUERY, MAX_RESULTS, EventValidator, schema_path
from stream.errors import InvalidEvent

NOW_MS = 1_763_800_000_000            # 2025-11-22, the validator's clock here
MIN_MS = 946_684_800_000              # 2000-01-01, the schema's minimum and the validator's default
SKEW_MS = 3_600_000                   # the validator's default max_future_skew_s
BATCH = 20                            # drawn values per Hypothesis example
#: Examples per property (FUZZ_EXAMPLES scales a local run). Hypothesis draws ~9,000 values here,
#: and two properties derive more inputs from each drawn event without Hypothesis' overhead (every
#: field dropped or given each value of WRONG; every prefix of its bytes): ~110,000 inputs in all.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
DERIVED_EVENTS = 4                    # drawn events per example that inputs are derived from
WRONG = [None, True, False, 0, -1, 1.5, 2 ** 63 - 1, -(2 ** 63), 1e300, "", " ", "\u3000", "x" * (MAX_QUERY + 1),
         "view", [], ["a"], [1], {}, {"a": None}]
#: Rejections the schema file cannot express: event time against the clock (and a date-time the
#: calendar refuses, such as 30 February), catalogue membership, the size limit in bytes.
OUTSIDE_SCHEMA = {"bad_timestamp", "unknown_product", "oversized"}

TOTALS: list = []                     # every Checker, for the count printed at the end
VALIDATOR = EventValidator(clock=lambda: NOW_MS / 1000)

FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=False,
                # no shrinking: a failure names its exact input, and shrinking batches takes minutes
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


@pytest.fixture(scope="module")
def schema():
    jsonschema = pytest.importorskip("jsonschema")
    doc = orjson.loads(schema_path("event").read_bytes())
    return jsonschema.Draft202012Validator(doc, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


class Checker:
    """Runs each input through the validator and, where needed, the schema; counts inputs."""

    def __init__(self, schema) -> None:
        self.schema = schema
        self.inputs = self.accepted = 0
        TOTALS.append(self)

    def __call__(self, raw: bytes, *, expect_valid: bool = False) -> None:
        self.inputs += 1
        try:
            VALIDATOR.parse(raw)
        except InvalidEvent as exc:                   # anything else fails the test as it is
            if exc.reason in OUTSIDE_SCHEMA:
                return
            obj = _object(raw)
            if obj is not None and self.schema.is_valid(obj):
                pytest.fail(f"the validator rejects ({exc.reason}: {exc}) what the schema accepts: {raw!r}")
            assert not expect_valid, f"a valid event was rejected ({exc.reason}: {exc}): {raw!r}"
            return
        self.accepted += 1
        errors = [e.message for e in self.schema.iter_errors(orjson.loads(raw))]
        assert not errors, f"the validator accepts what the schema rejects ({errors[0]}): {raw!r}"


def dumps(obj) -> bytes:
    """JSON of ``obj``; integers beyond 64 bits (which orjson cannot write) through the stdlib."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _object(raw: bytes) -> dict | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


# -- strategies ---------------------------------------------------------------------------------
def _has_text(s: str) -> bool:
    return bool(s.strip())


ids = st.one_of(
    st.text(min_size=1, max_size=12).filter(_has_text),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=MAX_ID).filter(_has_text),
    st.sampled_from(["a", "85123A", "kund-ø-17850", "séance", "😀", "x" * MAX_ID, " a ", "\u00a0b"]),
)
queries = st.one_of(ids, st.just("q" * MAX_QUERY), st.text(min_size=1, max_size=60).filter(_has_text))
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2 ** 64), max_value=2 ** 64),
    st.sampled_from([0, -1, 1, MIN_MS - 1, MIN_MS, NOW_MS, NOW_MS + SKEW_MS, NOW_MS + SKEW_MS + 1,
                     2 ** 53, 2 ** 63 - 1, -(2 ** 63), 2 ** 64, 10 ** 30, -(10 ** 30)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([float(NOW_MS), float(MIN_MS), NOW_MS + 0.5, 1e300, -0.0, 1.0]),
)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=10),
                         st.sampled_from(["", " ", "\t\n", "view", "search", "2025-11-22T08:26:00Z"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=4)

offsets = st.one_of(st.just(""), st.just("Z"), st.sampled_from(["+00:00", "-00:00", "+01:00", "+05:30", "-12:00",
                                                                   "+14:00", "+23:59", "-23:59"]))


@st.composite
def iso_times(draw, lo: datetime = datetime(2000, 1, 1), hi: datetime = datetime(2025, 11, 22, 8, 0)) -> str:
    dt = draw(st.datetimes(min_value=lo, max_value=hi))
    digits = draw(st.sampled_from([0, 0, 3, 6, 1, 2, 4, 5]))
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f".{dt.microsecond:06d}"[:digits + 1] if digits else ""
    return base + frac + draw(offsets)


valid_ts = st.one_of(
    st.integers(min_value=MIN_MS + 86_400_000, max_value=NOW_MS),
    st.sampled_from([MIN_MS + 86_400_000, NOW_MS, NOW_MS + SKEW_MS - 1000]),
    iso_times(),
    st.sampled_from(["2000-01-02T00:00:00Z", "2025-11-22T08:26:00Z", "2025-11-22T08:26:00.123+01:00",
                     "2025-11-22T08:26:00"]),
)
bound_ts = st.one_of(
    numbers,
    iso_times(lo=datetime(1, 1, 1), hi=datetime(9999, 12, 31, 23, 59, 59)),
    st.sampled_from([
        "1999-12-31T23:59:59.999999Z", "2000-01-01T00:00:00Z", "2000-01-01T00:00:00+01:00",
        "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59.999999Z",
        "0000-01-01T00:00:00Z", "2025-02-30T00:00:00Z", "2025-11-22T24:00:00Z", "2025-11-22T08:26:60Z",
        "2025-11-22", "2025-11-22T08", "2025-11-22 08:26:00", "20251122T082600Z", "2025-W47-6",
        "2025-11-22T08:26:00,5Z", "2025-11-22T08:26:00.1234567Z", "2025-11-22T08:26:00z",
        "2025-11-22T08:26:00+0100", "2025-11-22T08:26:00+24:00", "2025-11-22T08:26:00Z\n",
        "٢٠٢٥-١١-٢٢T08:26:00Z", "", " ", "now", "1763800000000",
    ]),
)
contexts = st.dictionaries(st.text(max_size=8), json_values, max_size=3)


@st.composite
def valid_events(draw) -> dict:
    etype = draw(st.sampled_from(sorted(EVENT_TYPES)))
    ev = {"event_id": draw(ids), "type": etype, "user_id": draw(ids), "session_id": draw(ids), "ts": draw(valid_ts)}
    if etype == "search":
        ev["query"] = draw(queries)
        if draw(st.booleans()):
            ev["results"] = draw(st.lists(ids, max_size=8) | st.just(["r"] * MAX_RESULTS))
    else:
        ev["item_id"] = draw(ids)
    if draw(st.booleans()):
        ev["schema_version"] = draw(st.sampled_from([1, 1.0]))
    if draw(st.booleans()):
        ev["context"] = draw(contexts)
    keys = draw(st.permutations(list(ev)))
    return {k: ev[k] for k in keys}


@st.composite
def near_valid_events(draw) -> dict:
    """A valid event with one change: a field dropped, replaced, added, or the type switched."""
    ev = draw(valid_events())
    how = draw(st.sampled_from(["drop", "replace", "replace", "add", "switch", "long", "blank", "ts"]))
    field = draw(st.sampled_from(sorted(FIELDS)))
    if how == "drop":
        ev.pop(field, None)
    elif how == "replace":
        ev[field] = draw(json_values)
    elif how == "add":
        ev[draw(st.text(max_size=12) | st.sampled_from(sorted(FIELDS)))] = draw(json_values)
    elif how == "switch":
        ev["type"] = draw(st.sampled_from(sorted(EVENT_TYPES - {ev["type"]})) | json_scalars)
    elif how == "long":
        ev[field] = draw(st.sampled_from(["x" * (MAX_ID + 1), "q" * (MAX_QUERY + 1), ["r"] * (MAX_RESULTS + 1),
                                          ["x" * (MAX_ID + 1)], [""], "😀" * (MAX_ID + 1)]))
    elif how == "blank":
        ev[field] = draw(st.sampled_from(["", " ", "\t", "\n", "\u00a0", "\u2028", "\x1c", "\u3000", "\ufeff"]))
    else:
        ev["ts"] = draw(bound_ts)
    return ev


@st.composite
def shaped_objects(draw) -> dict:
    """JSON objects that use the schema's field names with values of any type."""
    keys = draw(st.lists(st.sampled_from(sorted(FIELDS)) | st.text(max_size=6), max_size=8, unique=True))
    obj = {k: draw(json_values) for k in keys}
    if draw(st.booleans()):
        obj["type"] = draw(st.sampled_from(sorted(EVENT_TYPES)))
    return obj


@st.composite
def mangled_bytes(draw) -> bytes:
    """A valid event's JSON, truncated, with bytes flipped, inserted or deleted."""
    raw = bytearray(dumps(draw(valid_events())))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["cut", "flip", "insert", "delete"]))
        if op == "cut":
            del raw[i:]
        elif op == "flip" and i < len(raw):
            raw[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            raw[i:i] = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b'"', b"{", b"}", b",", b"\\u0000",
                                                                                     b"\\ud800", b"\xc3", b"\xff"]))
        elif op == "delete" and i < len(raw):
            del raw[i]
    return bytes(raw)


def batches(strategy):
    return st.lists(strategy, min_size=BATCH, max_size=BATCH)


# -- the properties -----------------------------------------------------------------------------
def test_valid_events_pass_both(schema):
    check = Checker(schema)

    @FUZZ
    @given(batches(valid_events()))
    def run(events):
        for ev in events:
            check(dumps(ev), expect_valid=True)

    run()
    assert check.inputs == check.accepted == EXAMPLES * BATCH


def test_near_valid_events_agree_with_the_schema(schema):
    check = Checker(schema)

    @FUZZ
    @given(batches(near_valid_events()))
    def run(events):
        for ev in events:
            check(dumps(ev))

    run()
    assert check.inputs == EXAMPLES * BATCH and check.accepted > 0


def test_every_field_dropped_or_of_each_wrong_value(schema):
    check = Checker(schema)

    @FUZZ
    @given(st.lists(valid_events(), min_size=DERIVED_EVENTS, max_size=DERIVED_EVENTS))
    def run(events):
        for ev in events:
            for name in sorted(FIELDS):
                check(dumps({k: v for k, v in ev.items() if k != name}))
                for value in WRONG:
                    check(dumps({**ev, name: value}))

    run()
    assert check.inputs == EXAMPLES * DERIVED_EVENTS * len(FIELDS) * (1 + len(WRONG))


def test_objects_of_any_shape_agree_with_the_schema(schema):
    check = Checker(schema)

    @FUZZ
    @given(batches(shaped_objects() | st.dictionaries(st.text(max_size=6), json_values, max_size=4) | json_values))
    def run(objs):
        for obj in objs:
            check(dumps(obj))

    run()
    assert check.inputs == EXAMPLES * BATCH


def test_random_and_mangled_bytes_raise_only_invalid_event(schema):
    check = Checker(schema)

    @FUZZ
    @given(batches(st.binary(max_size=300) | mangled_bytes()), st.lists(valid_events(), min_size=2, max_size=2))
    def run(raws, events):
        for raw in raws:
            check(raw)
        for ev in events:                              # every cut of a valid event
            raw = dumps(ev)
            for end in range(len(raw)):
                check(raw[:end])

    run()
    assert check.inputs >= EXAMPLES * (BATCH + 2 * 60)


def test_oversized_and_deep_inputs(schema):
    check = Checker(schema)

    @settings(FUZZ, max_examples=100)
    @given(valid_events(), st.integers(16_000, 20_000), st.integers(1, 2_000))
    def run(ev, size, depth):
        check(orjson.dumps({**ev, "context": {"blob": "x" * size}}))
        check(b'{"context":' + b"[" * depth + b"]" * depth + b"}")
        check(b"[" * depth + b"]" * depth)

    run()
    assert check.inputs == 300


def teardown_module(module) -> None:
    print(f"\nvalidator fuzz: {sum(c.inputs for c in TOTALS)} inputs, {sum(c.accepted for c in TOTALS)} accepted")
