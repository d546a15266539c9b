"""Loading and validation: every kind of bad record is reported by index, id, field and reason."""

import gzip
import json

import pytest

from redheart.architecture import BENTHAM_KEYS, EMOTIONS, SURD_KEYS
from redheart.config import DataConfig
from redheart.data.reader import DataError
from redheart.data.records import content_id, load_records

CONFIG = DataConfig()


def good(i, **changes):
    record = {
        "id": f"r{i}",
        "title": f"AITA {i}?",
        "text": f"Story number {i} about my roommate.",
        "action": "asking",
        "label": "OTHER",
        "label_scores": {"AUTHOR": 1, "OTHER": 5, "EVERYBODY": 0, "NOBODY": 0, "INFO": 0},
        "emotions": [0.1, 0.1, 0.1, 0.1, 0.4, 0.1, 0.1],
        "regret_factor": 0.3,
        "bentham_scores": {"intensity": 0.5, "duration": 0.4, "certainty": 0.3, "propinquity": 0.2},
        "surd_metrics": {"selection": 0.1, "uncertainty": 0.2, "risk": 0.3, "decision": 0.4},
    }
    record.update(changes)
    return record


# (raw JSON line, expected id, expected field, expected reason)
BAD_LINES = [
    ('{"id": "m1", "text": "unterminated', None, "<line>", "malformed_json"),
    (json.dumps(good(0, text="")), "r0", "text", "empty_text"),
    (json.dumps({k: v for k, v in good(1).items() if k != "text"}), "r1", "text", "missing_text"),
    (json.dumps(good(2, regret_factor="high")), "r2", "regret_factor", "wrong_type"),
    (json.dumps(good(3, emotions=[0.5, 0.5])), "r3", "emotions", "wrong_length"),
    (json.dumps(good(4, emotions=[-0.1, 0.2, 0.2, 0.2, 0.3, 0.1, 0.1])), "r4", "emotions[0]", "negative"),
    (json.dumps(good(5)).replace('"regret_factor": 0.3', '"regret_factor": NaN'), "r5", "regret_factor", "not_finite"),
    (
        json.dumps(good(6)).replace("[0.1, 0.1, 0.1, 0.1, 0.4", "[Infinity, 0.1, 0.1, 0.1, 0.4"),
        "r6",
        "emotions[0]",
        "not_finite",
    ),
    (json.dumps(good(7, emotions=[0.5] * 7)), "r7", "emotions", "sum_not_1"),
    (json.dumps(good(8, bentham_scores=[0.5, 1.5, 0.1, 0.1])), "r8", "bentham_scores[1]", "out_of_range"),
    (json.dumps(good(9, label="MAYBE")), "r9", "label", "unknown_label"),
    (json.dumps(good(10, label_scores={"AUTHOR": 1, "SOMEONE": 2})), "r10", "label_scores.SOMEONE", "unknown_key"),
    (json.dumps(good(11, label_scores={"AUTHOR": -1, "OTHER": 2})), "r11", "label_scores.AUTHOR", "bad_count"),
    (json.dumps(good(12, label_scores={"AUTHOR": 1.5, "OTHER": 2})), "r12", "label_scores.AUTHOR", "bad_count"),
    (json.dumps(good(13)).replace('"title"', '"label": "AUTHOR", "title"'), "r13", "label", "duplicate_key"),
    (
        json.dumps(good(14, emotions=dict(zip(EMOTIONS, [0.1, 0.1, 0.1, 0.1, 0.4, 0.1, 0.1])))).replace(
            '"joy": 0.1', '"joy": 0.1, "joy": 0.1'
        ),
        "r14",
        "emotions.joy",
        "duplicate_key",
    ),
    (json.dumps(good(15, surd_metrics={"selection": 0.1})), "r15", "surd_metrics.uncertainty", "missing_key"),
    (json.dumps(good(100, text="same id as the first good record")), "r100", "id", "duplicate_id"),
]


def write_lines(path, lines):
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


def test_each_bad_record_is_rejected_with_index_id_field_and_reason(tmp_path):
    goods = [json.dumps(good(100)), json.dumps(good(101))]
    non_utf8 = json.dumps(good(16)).encode().replace(b"roommate", b"roomm\xffate")
    lines = goods + [line for line, *_ in BAD_LINES] + [non_utf8]
    result = load_records(write_lines(tmp_path / "data.jsonl", lines), CONFIG)

    assert [r["id"] for r in result.records] == ["r100", "r101"]
    assert result.records_read == len(lines)
    rows = {row["index"]: row for row in result.rejected}
    for offset, (line, record_id, field, reason) in enumerate(BAD_LINES):
        row = rows[len(goods) + offset]
        assert row["id"] == record_id
        assert {"field": field, "reason": reason} in [
            {k: p[k] for k in ("field", "reason")} for p in row["problems"]
        ], row
        assert row["raw"] == line and row["line"] == len(goods) + offset + 1
        assert all(p["message"] for p in row["problems"])
    last = rows[len(lines) - 1]
    assert last["problems"][0]["reason"] == "non_utf8" and "\\xff" in last["raw"]
    assert result.rejected_by_reason["emotions: sum_not_1"] == 1
    assert sum(result.rejected_by_reason.values()) >= len(BAD_LINES) + 1


def test_malformed_line_reports_line_and_column(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(good(1)), '{"id": "x", "text": }'])
    (row,) = load_records(path, CONFIG).rejected
    assert row["problems"][0]["message"].startswith("line 2 column 21:")


def test_strict_mode_raises_listing_every_problem(tmp_path):
    path = write_lines(
        tmp_path / "data.jsonl",
        [json.dumps(good(1)), json.dumps(good(2, label="MAYBE")), json.dumps(good(3, regret_factor=2.0))],
    )
    with pytest.raises(DataError) as error:
        load_records(path, CONFIG, strict=True)
    message = str(error.value)
    assert "record 1 (id 'r2', line 2): label:" in message and "record 2 (id 'r3', line 3): regret_factor:" in message


def test_dict_and_list_forms_give_identical_clean_records(tmp_path):
    as_lists = good(
        1,
        emotions=[0.1, 0.2, 0.05, 0.05, 0.3, 0.2, 0.1],
        bentham_scores=[0.5, 0.4, 0.3, 0.2],
        surd_metrics=[0.1, 0.2, 0.3, 0.4],
    )
    as_dicts = good(
        1,
        emotions=dict(zip(reversed(EMOTIONS), [0.1, 0.2, 0.3, 0.05, 0.05, 0.2, 0.1])),
        bentham_scores=dict(zip(BENTHAM_KEYS, [0.5, 0.4, 0.3, 0.2])),
        surd_metrics=dict(zip(reversed(SURD_KEYS), [0.4, 0.3, 0.2, 0.1])),
    )
    (a,) = load_records(write_lines(tmp_path / "a.jsonl", [json.dumps(as_lists)]), CONFIG).records
    (b,) = load_records(write_lines(tmp_path / "b.jsonl", [json.dumps(as_dicts)]), CONFIG).records
    assert a == b
    assert a["emotions"] == [0.1, 0.2, 0.05, 0.05, 0.3, 0.2, 0.1]


def test_absent_fields_become_null_and_missing_id_is_derived_from_content(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [json.dumps({"text": "Only a text."})] * 2)
    result = load_records(path, CONFIG)
    (record,) = result.records
    assert record == {
        "id": content_id(record),
        "title": "",
        "text": "Only a text.",
        "action": None,
        "label": None,
        "label_scores": None,
        "emotions": None,
        "regret_factor": None,
        "bentham_scores": None,
        "surd_metrics": None,
    }
    assert record["id"].startswith("auto-")
    assert result.rejected[0]["problems"][0]["reason"] == "duplicate_id"  # the exact copy is not kept twice


def test_json_array_gzip_with_a_broken_element_recovers_the_rest(tmp_path):
    text = (
        "[\n"
        + ",\n".join(
            [
                json.dumps(good(1)),
                '{"id": "bad", "text": "x", "emotions": [0.1,, 0.2]}',
                json.dumps(good(2, label="MAYBE")),
                json.dumps(good(3)),
            ]
        )
        + "\n]\n"
    )
    path = tmp_path / "data.json.gz"
    path.write_bytes(gzip.compress(text.encode()))
    result = load_records(path, CONFIG)
    assert [r["id"] for r in result.records] == ["r1", "r3"]
    broken, unknown = result.rejected
    assert broken["index"] == 1 and broken["line"] == 3 and broken["raw"].startswith('{"id": "bad"')
    assert broken["problems"][0]["reason"] == "malformed_json" and "line 3 column" in broken["problems"][0]["message"]
    assert unknown["index"] == 2 and unknown["id"] == "r2"


def test_truncated_json_array_is_a_fatal_error_naming_line_and_column(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("[\n" + json.dumps(good(1)) + ",\n" + json.dumps(good(2))[:40])
    with pytest.raises(DataError, match=r"line 3 column \d+"):
        load_records(path, CONFIG)
