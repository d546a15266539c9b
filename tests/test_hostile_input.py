"""Hostile and odd input through `prepare` and the encoders: each case works or is rejected with a
clear message, and nothing is lost or half-written. (`redheart predict` does not exist yet; when it
does, the same texts belong in its tests.)"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from redheart.config import DataConfig, EncoderConfig
from redheart.core.atomic import read_json
from redheart.core.rundir import RunDir
from redheart.data.encoders import build_encoder, document_text
from redheart.data.prepare import prepare
from redheart.data.reader import DataError
from redheart.data.records import load_records

from tiny_run import synthetic_record

ODD_TEXTS = {
    "rtl": "قلت لصديقي إنني لن أحضر الحفل \u202eodd\u202c and שלום",
    "emoji": "my friend 🤦‍♀️ said 👍🏽 so I left 🏠",
    "korean": "나는 친구의 생일 파티에 가지 않았다. 내가 잘못한 걸까?",
    "controls": "tab\there, bell\u0007, nul\u0000, escape\u001b[31m red",
}


def normal_lines(n: int = 40) -> list[str]:
    rng = random.Random(0)
    return [json.dumps(synthetic_record(i, rng)) for i in range(n)]


def run_prepare(tmp_path: Path, lines: list[str]) -> tuple[RunDir, list[dict], list[dict]]:
    path = tmp_path / "input.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = RunDir(tmp_path / "run")
    prepare(path, run, DataConfig())
    read = lambda p: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]  # noqa: E731
    return run, read(run.clean_records), read(run.rejected_records)


def test_empty_file_fails_clearly_and_writes_nothing(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    run = RunDir(tmp_path / "run")
    with pytest.raises(DataError, match="empty.jsonl: no records found"):
        prepare(tmp_path / "empty.jsonl", run, DataConfig())
    assert not run.data.exists() or not any(run.data.iterdir())


def test_odd_scripts_and_control_characters_survive_unchanged(tmp_path):
    odd = [
        json.dumps({"id": name, "text": text, "label": "OTHER"}, ensure_ascii=False) for name, text in ODD_TEXTS.items()
    ]
    run, clean, rejected = run_prepare(tmp_path, normal_lines() + odd)
    kept = {record["id"]: record["text"] for record in clean}
    assert rejected == [] and all(kept[name] == text for name, text in ODD_TEXTS.items())
    split = read_json(run.split_manifest)
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(kept)  # nothing lost


def test_hostile_records_are_rejected_one_by_one_with_reasons(tmp_path):
    hostile = [
        '{"id": "deep", "text": "x", "action": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"id": "raw-control", "text": "a\u0001b"}',  # a raw control character is not valid JSON
        '{"id": "dup", "text": "first", "text": "second"}',
        '{"id": "surrogate", "text": "\\ud800 lone"}',
    ]
    _, clean, rejected = run_prepare(tmp_path, normal_lines() + hostile)
    assert len(clean) == 40
    reasons = {row["line"]: (row["problems"][0]["reason"], row["problems"][0]["message"]) for row in rejected}
    assert reasons[41][0] == "too_deep" and "nested too deeply" in reasons[41][1]
    assert reasons[42][0] == "malformed_json" and "Invalid control character" in reasons[42][1]
    assert reasons[43] == ("duplicate_key", "key 'text' appears more than once in one JSON object")
    assert reasons[44][0] == "non_utf8"


def test_encoders_take_odd_texts(tmp_path):
    encoder = build_encoder(EncoderConfig(name="hashing", dim=32, max_segments=4))
    vectors, mask = encoder.encode(
        [document_text({"title": "", "text": t}) for t in ODD_TEXTS.values()] + [""], progress=False
    )
    assert mask[:, 0].all() and (abs(vectors).sum(axis=(1, 2)) > 0).all()
    # Korean words are words: the text does not collapse to the vector of an empty text.
    assert not (vectors[2] == vectors[-1]).all()


def test_a_100_mb_text_loads_and_encodes(tmp_path):
    path = tmp_path / "big.jsonl"
    text = "word " * 20_000_000
    path.write_text(json.dumps({"id": "big", "text": text, "label": "AUTHOR"}) + "\n")
    loaded = load_records(path, DataConfig())
    assert len(loaded.records[0]["text"]) == len(text)
    _, mask = build_encoder(EncoderConfig(name="hashing", dim=32, max_segments=4)).encode(
        [loaded.records[0]["text"]], progress=False
    )
    assert mask.sum() == 4  # cut to max_segments windows, not lost


MILLION = """
import json, resource, sys, time
from pathlib import Path
from redheart.config import DataConfig
from redheart.data.records import load_records
path = Path(sys.argv[1])
with open(path, "w") as handle:
    for i in range(1_000_000):
        record = {"id": f"r{i}", "text": f"record number {i} about my friend", "label": "OTHER"}
        handle.write(json.dumps(record) + "\\n")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
records = load_records(path, DataConfig()).records
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"records": len(records), "file_mb": path.stat().st_size / 2**20, "seconds": seconds,
                  "peak_rss_mb": peak / 1024, "rss_before_mb": before / 1024}))
"""


@pytest.mark.slow  # about 30 s
def test_a_million_records_stream_with_memory_bounded_by_the_clean_records(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", MILLION, str(tmp_path / "m.jsonl")], capture_output=True, text=True, check=True
    )
    numbers = json.loads(result.stdout)
    print(numbers)
    assert numbers["records"] == 1_000_000
    # The clean records themselves are kept (dedup needs them all); the raw file is never held whole.
    assert numbers["peak_rss_mb"] - numbers["rss_before_mb"] < 2_000
