"""The event schema: a table of valid and invalid events, checked by the fast validator and by
the published JSON Schema file, which must agree."""
from __future__ import annotations

import orjson
import pytest

from stream.core.schema import EventValidator, schema_path
from stream.errors import InvalidEvent

NOW_MS = 1_763_800_000_000  # 2025-11-22
CLOCK = lambda: NOW_MS / 1000  # noqa: E731
KNOWN = {"85123A", "71053", "22423"}


def base(**kw):
    ev = {"event_id": "e1", "type": "view", "user_id": "17850", "session_id": "s1", "ts": NOW_MS,
          "item_id": "85123A"}
    ev.update(kw)
    return {k: v for k, v in ev.items() if v is not ...}


VALID = [
    ("view", base()),
    ("click", base(type="click")),
    ("add_to_cart", base(type="add_to_cart", item_id="71053")),
    ("purchase", base(type="purchase", item_id="22423")),
    ("iso_ts_utc", base(ts="2025-11-22T08:26:00Z")),
    ("iso_ts_offset", base(ts="2025-11-22T08:26:00.123+01:00")),
    ("iso_ts_naive_is_utc", base(ts="2025-11-22T08:26:00")),
    ("search", base(type="search", item_id=..., query="red heart candle holder")),
    ("search_with_results", base(type="search", item_id=..., query="lantern", results=["71053", "ZZZ"])),
    ("schema_version", base(schema_version=1)),
    ("context", base(context={"page": "home", "device": "mobile"})),
    ("unicode", base(user_id="kund-ø-17850", session_id="séance")),
    # found by test_validator_fuzz.py: JSON Schema's "integer" includes 1.0, so the schema accepted it
    ("ts_integral_float", base(ts=float(NOW_MS))),
    ("iso_ts_one_fraction_digit", base(ts="2025-11-22T08:26:00.5Z")),
]

INVALID = [
    ("missing_event_id", base(event_id=...), "missing_field"),
    ("missing_user", base(user_id=...), "missing_field"),
    ("missing_session", base(session_id=...), "missing_field"),
    ("missing_ts", base(ts=...), "missing_field"),
    ("missing_type", base(type=...), "missing_field"),
    ("missing_item", base(item_id=...), "missing_field"),
    ("search_without_query", base(type="search", item_id=...), "missing_field"),
    ("unknown_type", base(type="teleport"), "unknown_type"),
    ("user_id_number", base(user_id=17850), "wrong_type"),
    ("empty_event_id", base(event_id="  "), "wrong_type"),
    ("ts_bool", base(ts=True), "wrong_type"),
    ("ts_float_string", base(ts="yesterday"), "bad_timestamp"),
    ("ts_before_2000", base(ts=86_400_000), "bad_timestamp"),
    ("ts_far_future", base(ts=NOW_MS + 86_400_000 * 365), "bad_timestamp"),
    ("query_on_view", base(query="lamp"), "unexpected_field"),
    ("results_on_view", base(results=["71053"]), "unexpected_field"),
    ("item_on_search", base(type="search", query="lamp"), "unexpected_field"),
    ("results_not_list", base(type="search", item_id=..., query="lamp", results="71053"), "wrong_type"),
    ("results_not_strings", base(type="search", item_id=..., query="lamp", results=[1, 2]), "wrong_type"),
    ("too_many_results", base(type="search", item_id=..., query="lamp", results=["a"] * 201), "too_long"),
    ("long_user_id", base(user_id="u" * 129), "too_long"),
    ("long_query", base(type="search", item_id=..., query="q" * 513), "too_long"),
    ("unknown_field", base(price=3), "unknown_field"),
    ("bad_version", base(schema_version=2), "unsupported_version"),
    ("context_not_object", base(context="home"), "wrong_type"),
    ("unknown_product", base(item_id="NO-SUCH"), "unknown_product"),
    # found by test_validator_fuzz.py
    ("type_list", base(type=["view"]), "unknown_type"),          # raised TypeError (unhashable)
    ("type_object", base(type={}), "unknown_type"),
    ("context_null", base(context=None), "wrong_type"),          # was accepted
    ("results_null", base(type="search", item_id=..., query="lamp", results=None), "wrong_type"),  # was accepted
    ("ts_fraction_not_integer", base(ts=NOW_MS + 0.5), "wrong_type"),
]

# Timestamps as text that Python's datetime.fromisoformat (3.11) reads but the schema's date-time
# pattern does not: the validator accepted them (found by test_validator_fuzz.py).
TS_TEXT_INVALID = ["2025-11-22", "2025-11-22T08", "2025-11-22 08:26:00", "20251122T082600Z", "2025-W47-6",
                   "2025-11-22T08:26:00,5Z", "2025-11-22T08:26:00.1234567Z", "2025-11-22T08:26:00+0100",
                   "2025-11-22T08:26:00z", "٢٠٢٥-١١-٢٢T08:26:00Z"]

RAW_INVALID = [
    (b"", "not_json"),
    (b"{not json", "not_json"),
    (b"\xff\xfe", "not_json"),
    (b"[1, 2]", "not_object"),
    (b'"view"', "not_object"),
    (b"null", "not_object"),
    (orjson.dumps(base(context={"blob": "x" * 20_000})), "oversized"),
]


@pytest.fixture
def validator():
    return EventValidator(known_product=KNOWN.__contains__, clock=CLOCK)


@pytest.fixture(scope="module")
def json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = orjson.loads(schema_path("event").read_bytes())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


@pytest.mark.parametrize("name,event", VALID, ids=[v[0] for v in VALID])
def test_valid_events_pass_both_validators(name, event, validator, json_schema):
    parsed = validator.parse(orjson.dumps(event))
    assert parsed.event_id == event["event_id"] and parsed.type == event["type"]
    assert list(json_schema.iter_errors(event)) == []


@pytest.mark.parametrize("name,event,reason", INVALID, ids=[v[0] for v in INVALID])
def test_invalid_events_are_rejected_with_reason(name, event, reason, validator, json_schema):
    with pytest.raises(InvalidEvent) as exc:
        validator.parse(orjson.dumps(event))
    assert exc.value.reason == reason
    if reason not in {"unknown_product", "bad_timestamp"}:  # catalogue and clock are not in the schema file
        assert list(json_schema.iter_errors(event)), f"schema file accepts {name}"


@pytest.mark.parametrize("ts", TS_TEXT_INVALID)
def test_timestamp_text_outside_the_schema_pattern_is_rejected(ts, validator, json_schema):
    with pytest.raises(InvalidEvent) as exc:
        validator.parse(orjson.dumps(base(ts=ts)))
    assert exc.value.reason == "bad_timestamp"
    assert list(json_schema.iter_errors(base(ts=ts))), f"schema file accepts ts {ts!r}"


@pytest.mark.parametrize("raw,reason", RAW_INVALID)
def test_raw_bytes_rejected(raw, reason, validator):
    with pytest.raises(InvalidEvent) as exc:
        validator.parse(raw)
    assert exc.value.reason == reason


def test_timestamps_are_parsed_to_seconds(validator):
    a = validator.parse(orjson.dumps(base(ts="2025-11-22T08:26:00Z")))
    b = validator.parse(orjson.dumps(base(ts=1_763_799_960_000)))
    assert a.ts == b.ts == 1_763_799_960.0


def test_event_round_trips_through_to_dict(validator):
    ev = validator.parse(orjson.dumps(base(type="search", item_id=..., query="lamp", results=["71053"])))
    again = validator.parse(orjson.dumps(ev.to_dict()))
    assert again == ev


def test_recommendation_schema_file_is_valid_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(orjson.loads(schema_path("recommendation").read_bytes()))
