"""Validate a user's data file into clean records, rejecting bad ones with their reasons.

Input: the items of a JSON array or JSON Lines file, as `reader.DataFile` streams them. A bad record is
rejected on its own with every problem found in it (record index, line, id, field, message), and the rest of
the file goes on.

Output: clean records in the normalized format of the project (emotions, bentham and SURD as lists in
the order of their Target's fields in redheart.architecture); a target absent from the input becomes None, never
a made-up value.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from redheart.architecture import DISTRIBUTION, TARGET_DIMS, VERDICTS, Target, target
from redheart.config import DataConfig
from redheart.data.reader import DataError, DataFile, JsonObject, Problem

KNOWN_FIELDS = (
    "id",
    "title",
    "text",
    "action",
    "label",
    "label_scores",
    "emotions",
    "regret_factor",
    "bentham_scores",
    "surd_metrics",
)
_STRICT_LISTED = 100  # problems spelled out in a strict-mode error; the rest are counted


@dataclass
class LoadResult:
    records: list[dict[str, Any]]
    rejected: list[dict[str, Any]]  # rows of rejected.jsonl: index, line, id, problems, raw
    records_read: int
    rejected_by_reason: Counter  # "field: reason" -> number of rejected records with that problem
    ignored_fields: Counter  # unknown top-level field name -> number of records that had it


def load_records(path: str | Path, config: DataConfig, strict: bool = False) -> LoadResult:
    """Read and validate every record of `path`; bad records go to `rejected` (or raise when `strict`)."""
    result = LoadResult([], [], 0, Counter(), Counter())
    seen_ids: dict[str, int] = {}
    with DataFile.open(path) as data:
        for index, (line, raw, value, problems) in enumerate(data.items()):
            result.records_read += 1
            record = None
            if not problems:
                record, problems = normalize_record(value, config)
            if record is not None and record["id"] in seen_ids:
                problems = [_duplicate_id(record, seen_ids[record["id"]])]
            if problems:
                _reject(result, index, line, value, raw, problems)
                continue
            assert record is not None  # normalize_record gives a record or problems
            seen_ids[record["id"]] = index
            result.records.append(record)
            result.ignored_fields.update(key for key in value if key not in KNOWN_FIELDS)
    if result.records_read == 0:
        raise DataError(f"{path}: no records found")
    if strict and result.rejected:
        raise DataError(_strict_message(path, result.rejected))
    return result


def normalize_record(value: Any, config: DataConfig) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Validate one parsed record; return the clean record, or None and every problem found."""
    if not isinstance(value, dict):
        return None, [Problem("<record>", "wrong_type", f"expected a JSON object, got {_kind(value)}")]
    problems = [
        Problem(name, "duplicate_key", f"key {key!r} appears more than once in one JSON object")
        for name, key in _duplicate_keys(value)
    ]
    check = _Checker(problems)
    record = {
        "id": check.optional_str(value, "id"),
        "title": check.optional_str(value, "title") or "",
        "text": check.text(value),
        "action": check.optional_str(value, "action"),
        "label": check.label(value),
        "label_scores": check.label_scores(value),
        # The targets held in a field of their name (the verdict comes from label and label_scores), in the
        # order of KNOWN_FIELDS, the order of a clean record.
        **{name: check.target(value, target(name), config) for name in KNOWN_FIELDS if name in TARGET_DIMS},
    }
    if problems:
        return None, problems
    if record["id"] is None:
        record["id"] = content_id(record)
    return record, []


def content_id(record: dict[str, Any]) -> str:
    """A deterministic id for a record that has none: a hash of everything else in it.

    Two id-less records with identical content get the same id, so the second is rejected as a
    duplicate id (it is an exact copy) rather than kept twice.
    """
    content = {key: value for key, value in record.items() if key != "id"}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return "auto-" + digest.hexdigest()[:20]


class _Checker:
    """Field validators: each returns the normalized value (or None) and appends problems it finds."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems

    def add(self, field_name: str, reason: str, message: str) -> None:
        self.problems.append(Problem(field_name, reason, message))

    def optional_str(self, value: dict, name: str) -> str | None:
        item = value.get(name)
        if item is None:
            return None
        if not isinstance(item, str):
            self.add(name, "wrong_type", f"expected a string, got {_kind(item)}")
            return None
        if not _is_valid_unicode(item):
            self.add(name, "non_utf8", "contains bytes that are not valid UTF-8 (or a lone surrogate escape)")
        if name == "id" and not item.strip():
            self.add(name, "empty", "id is an empty string")
        return item

    def text(self, value: dict) -> str | None:
        if "text" not in value or value["text"] is None:
            self.add("text", "missing_text", "the record has no text")
            return None
        text = self.optional_str(value, "text")
        if text is not None and not text.strip():
            self.add("text", "empty_text", "text is empty or only whitespace")
        return text

    def label(self, value: dict) -> str | None:
        label = value.get("label")
        if label is not None and label not in VERDICTS:
            self.add("label", "unknown_label", f"{_short(label)} is not one of {', '.join(VERDICTS)}")
            return None
        return label

    def label_scores(self, value: dict) -> dict[str, int] | None:
        scores = value.get("label_scores")
        if scores is None:
            return None
        if not isinstance(scores, dict):
            self.add("label_scores", "wrong_type", f"expected an object of vote counts, got {_kind(scores)}")
            return None
        before = len(self.problems)
        for key, count in scores.items():
            where = f"label_scores.{key}"
            if key not in VERDICTS:
                self.add(where, "unknown_key", f"{key!r} is not one of {', '.join(VERDICTS)}")
            elif not _is_number(count) or not math.isfinite(count) or count != int(count):
                self.add(where, "bad_count", f"vote count must be a whole number, got {_short(count)}")
            elif count < 0:
                self.add(where, "bad_count", f"vote count must not be negative, got {count}")
        if len(self.problems) > before:
            return None
        if sum(scores.values()) == 0:
            self.add("label_scores", "no_votes", "every vote count is 0, so there is no verdict distribution")
            return None
        # A verdict missing from the counts received no votes; the vote distribution needs all five.
        return {verdict: int(scores.get(verdict, 0)) for verdict in VERDICTS}

    def score(self, item: Any, where: str) -> float | None:
        if item is None:
            return None
        if not _is_number(item):
            self.add(where, "wrong_type", f"expected a number, got {_kind(item)}")
        elif not math.isfinite(item):
            self.add(where, "not_finite", f"{item} is not a finite number")
        elif not 0.0 <= item <= 1.0:
            self.add(where, "out_of_range", f"{item} is outside [0, 1]")
        else:
            return float(item)
        return None

    def target(self, value: dict, declared: Target, config: DataConfig) -> float | list[float] | None:
        """A target of one dimension is a score; a wider one a vector of scores, or a distribution."""
        if declared.dim == 1:
            return self.score(value.get(declared.name), declared.name)
        tolerance = config.emotion_sum_tolerance if declared.kind == DISTRIBUTION else None
        return self.vector(value, declared.name, declared.fields, distribution=tolerance)

    def vector(
        self, value: dict, name: str, keys: tuple[str, ...], distribution: float | None = None
    ) -> list[float] | None:
        """A list in `keys` order or an object keyed by `keys`; scores in [0,1], or a distribution."""
        item = value.get(name)
        if item is None:
            return None
        before = len(self.problems)
        if isinstance(item, dict):
            for key in item.keys() - set(keys):
                self.add(f"{name}.{key}", "unknown_key", f"{key!r} is not one of {', '.join(keys)}")
            for key in (k for k in keys if k not in item):
                self.add(f"{name}.{key}", "missing_key", f"{key!r} is missing")
            pairs = [(f"{name}.{key}", item.get(key)) for key in keys if key in item]
        elif isinstance(item, list):
            if len(item) != len(keys):
                self.add(name, "wrong_length", f"expected {len(keys)} values ({', '.join(keys)}), got {len(item)}")
            pairs = [(f"{name}[{i}]", v) for i, v in enumerate(item)]
        else:
            self.add(name, "wrong_type", f"expected a list or an object, got {_kind(item)}")
            return None
        if distribution is None:
            values = [self.score(v, where) for where, v in pairs]
        else:
            values = [self._probability(v, where) for where, v in pairs]
        if len(self.problems) > before:
            return None
        checked = cast(list[float], values)  # every value passed its check
        if distribution is not None and abs(sum(checked) - 1.0) > distribution:
            self.add(name, "sum_not_1", f"values sum to {sum(checked):.4g}, not 1 (tolerance {distribution})")
            return None
        return checked

    def _probability(self, item: Any, where: str) -> float | None:
        if not _is_number(item):
            self.add(where, "wrong_type", f"expected a number, got {_kind(item)}")
        elif not math.isfinite(item):
            self.add(where, "not_finite", f"{item} is not a finite number")
        elif item < 0:
            self.add(where, "negative", f"{item} is negative")
        else:
            return float(item)
        return None


def _duplicate_keys(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, key) for every key repeated inside any object of the record."""
    if isinstance(value, JsonObject):
        for key in value.duplicate_keys:
            yield (f"{path}.{key}" if path else key), key
        for key, item in value.items():
            yield from _duplicate_keys(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _duplicate_keys(item, f"{path}[{i}]")


def _is_number(item: Any) -> bool:
    return isinstance(item, (int, float)) and not isinstance(item, bool)


def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(item: Any) -> str:
    for kind, name in (
        (bool, "a boolean"),
        (dict, "an object"),
        (list, "a list"),
        (str, "a string"),
        (int, "an integer"),
        (float, "a number"),
    ):
        if isinstance(item, kind):
            return name
    return "null" if item is None else type(item).__name__


def _short(item: Any, limit: int = 60) -> str:
    text = repr(item)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_text(text: str) -> str:
    """Text that can be written as UTF-8: undecodable bytes and lone surrogates become escapes."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _display_id(value: Any) -> str | int | None:
    item = value.get("id") if isinstance(value, dict) else None
    if isinstance(item, str):
        return _safe_text(item)
    return item if _is_number(item) and math.isfinite(cast(float, item)) else None


def _duplicate_id(record: dict[str, Any], first: int) -> Problem:
    origin = "generated from identical content" if record["id"].startswith("auto-") else "given"
    return Problem(
        "id", "duplicate_id", f"id {record['id']!r} ({origin}) is already used by the record at index {first}"
    )


def _reject(result: LoadResult, index: int, line: int, value: Any, raw: str, problems: list[Problem]) -> None:
    result.rejected.append(
        {
            "index": index,
            "line": line,
            "id": _display_id(value),
            "problems": [{"field": p.field, "reason": p.reason, "message": p.message} for p in problems],
            "raw": _safe_text(raw),
        }
    )
    result.rejected_by_reason.update({f"{p.field.split('.')[0].split('[')[0]}: {p.reason}" for p in problems})


def _strict_message(path: str | Path, rejected: list[dict[str, Any]]) -> str:
    lines = [f"{path}: {len(rejected)} invalid record(s):"]
    for row in rejected:
        for problem in row["problems"]:
            lines.append(
                f"  record {row['index']} (id {row['id']!r}, line {row['line']}): "
                f"{problem['field']}: {problem['message']}"
            )
    if len(lines) > _STRICT_LISTED + 1:
        lines = lines[: _STRICT_LISTED + 1] + [f"  ... and {len(lines) - _STRICT_LISTED - 1} more problem(s)"]
    return "\n".join(lines)
