"""Predictions from a final model: `redheart.load(path).predict(...)`, `redheart predict` and `redheart serve`.

The model comes from a final-model folder (redheart.select.final_model: safetensors + JSON, checksums
verified); its texts are embedded by the encoder its config.json names, through the embedding cache, so
a text seen in training gets the vectors training used. Distributions are calibrated with the folder's
calibrators.json (fitted on validation; the method chosen per target there), unless `calibrated=False`.

The verdict comes as {label, argmax, distribution}: `label` is the class of the folder's decision rule
(decision_rule.json: class weights fitted on validation, on the very distribution served in this mode), the
label whose macro-F1 the report gives; `argmax` is the most probable class of `distribution`.

Input files are read as a stream (plain or gzip JSON Lines, or one text per line), so memory does not grow
with the file; output rows keep the input's order.
"""

from __future__ import annotations

import io
import json
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from redheart.architecture import DISTRIBUTION_TARGETS, TARGETS, VERDICTS
from redheart.config import EncoderConfig
from redheart.core.atomic import atomic_open
from redheart.core.checkpoint_files import CheckpointError, sha256
from redheart.core.rundir import ModelDir
from redheart.data.dataset import SplitTensors
from redheart.data.embedding_cache import EmbeddingCache
from redheart.data.encode import encode_texts
from redheart.data.encoders import build_encoder, document_text
from redheart.data.reader import DataFile
from redheart.evaluate.calibrators import CALIBRATED_TARGETS, load_calibrators
from redheart.evaluate.decision_rule import SERVED_BATCH, load_decision_rule
from redheart.select.final_model import load_final_model
from redheart.train.evaluation import placement_for, split_forward

ON_ERROR = ("stop", "row")


# ---- results ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The community verdict: the decision rule's class, the most probable class, and the distribution."""

    label: str  # the rule's class: the label the report's verdict macro-F1 (rule) scores
    argmax: str  # the most probable class of `distribution`
    distribution: dict[str, float]  # probabilities by verdict, calibrated unless predicting uncalibrated

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "argmax": self.argmax, "distribution": dict(self.distribution)}


@dataclass(frozen=True)
class Prediction:
    """Every output of the model for one text, by name."""

    emotions: dict[str, float]  # distribution over joy, trust, fear, surprise, sadness, disgust, anger
    bentham_scores: dict[str, float]  # intensity, duration, certainty, propinquity, each in [0, 1]
    regret_factor: float
    surd_metrics: dict[str, float]  # selection, uncertainty, risk, decision, each in [0, 1]
    verdict: Verdict
    calibration: dict[str, str]  # calibration method per distribution ("none" when uncalibrated)
    id: str | None = None  # the input record's id, when it had one

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, in schema order (the id first when there is one)."""
        out: dict[str, Any] = {} if self.id is None else {"id": self.id}
        return {
            **out,
            "emotions": dict(self.emotions),
            "bentham_scores": dict(self.bentham_scores),
            "regret_factor": self.regret_factor,
            "surd_metrics": dict(self.surd_metrics),
            "verdict": self.verdict.to_dict(),
            "calibration": dict(self.calibration),
        }


# ---- the predictor ------------------------------------------------------------------------------------------------


def as_records(items: str | Iterable[str | Mapping[str, Any]]) -> list[dict[str, str]]:
    """Records {"text", "title"?, "id"?} from one text, texts, or records; ValueError naming a bad item."""
    if isinstance(items, str):
        return [{"text": items}]
    records = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            records.append({"text": item})
            continue
        if not isinstance(item, Mapping):
            raise ValueError(f"item {index}: expected a text or a record with a text field, not {type(item).__name__}")
        problem = record_problem(item)
        if problem:
            raise ValueError(f"item {index}: {problem}")
        records.append({k: item[k] for k in ("id", "title", "text") if item.get(k) is not None})
    return records


def record_problem(record: Mapping[str, Any]) -> str | None:
    """What is wrong with an input record, or None."""
    if not isinstance(record.get("text"), str):
        return "field 'text' must be a string"
    for name in ("title", "id"):
        if record.get(name) is not None and not isinstance(record[name], str):
            return f"field '{name}' must be a string"
    return None


class Predictor:
    """A loaded final model with its encoder, embedding cache, calibrators and decision rule.

    `predict` takes one text, texts or records ({"text", "title"?, "id"?}) and returns one Prediction each, in
    order, computed in batches of `batch_size`. Each thread that predicts keeps its own open embedding cache.
    """

    def __init__(
        self,
        model_dir: str | Path,
        calibrated: bool = True,
        cache_dir: Path | None = None,
        batch_size: int = SERVED_BATCH,
        device: torch.device | str = "auto",
    ) -> None:
        """`device`: where the model runs ("auto": a GPU where there is one, whole or one group at a time as
        its memory allows; train.evaluation.placement_for). `batch_size`: texts per forward pass, the batches in
        which the evaluation scored the labels."""
        self.model_dir = Path(model_dir)
        self.files = ModelDir(self.model_dir)
        self.batch_size = batch_size
        self.device = device
        self.model, self.info = load_final_model(self.model_dir)
        placement = placement_for(self.model, device)
        if placement.device.type == "cuda" and not placement.by_group:  # it fits: moved once, not per call
            self.model.to(placement.device)
        encoder_config = EncoderConfig(**self.info["encoder"])
        self.encoder = build_encoder(encoder_config)
        if (self.encoder.dim, self.encoder.max_segments) != (self.info["input_dim"], self.info["max_segments"]):
            raise CheckpointError(
                f"{self.files.config}: encoder {self.encoder.key} gives "
                f"{self.encoder.max_segments}x{self.encoder.dim}"
                f" vectors, the model expects {self.info['max_segments']}x{self.info['input_dim']}"
            )
        self.cache_dir = cache_dir
        self._local = threading.local()
        manifest_sha = sha256(self.files.manifest)
        self.calibrators = None
        if calibrated:
            if not self.files.calibrators.exists():
                raise FileNotFoundError(
                    f"{self.files.calibrators}: this model has no calibrators; fit them (redheart calibrate) or "
                    "predict uncalibrated"
                )
            self.calibrators = load_calibrators(self.files.calibrators)
            if self.calibrators.model_sha256 != manifest_sha:
                raise CheckpointError(
                    f"{self.files.calibrators}: fitted for another model (manifest sha256 differs); fit them again "
                    "for this one"
                )
        self.mode = "calibrated" if calibrated else "uncalibrated"
        self.rule = load_decision_rule(self.files.decision_rule)
        stale = self.rule.model_sha256 != manifest_sha or (
            calibrated and self.rule.calibrators_sha256 != sha256(self.files.calibrators)
        )
        if stale:
            raise CheckpointError(
                f"{self.files.decision_rule}: fitted for another model or calibration; fit it again (redheart "
                "calibrate) for this one"
            )
        self.weights = np.asarray(self.rule.weights(self.mode), dtype=np.float64)

    def _cache(self) -> EmbeddingCache:
        cache = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = EmbeddingCache(self.cache_dir)
        return cache

    def close(self) -> None:
        """Close this thread's embedding cache (it reopens on the next prediction)."""
        cache = getattr(self._local, "cache", None)
        if cache is not None:
            cache.close()
            self._local.cache = None

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @torch.no_grad()
    def fused(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Fused outputs of a batch: probabilities (N, K) for distributions, values (N, k) otherwise."""
        vectors, mask = encode_texts(texts, self.encoder, cache=self._cache())
        split = SplitTensors(
            "predict",
            tuple(map(str, range(len(texts)))),
            {"x": torch.from_numpy(vectors), "mask": torch.from_numpy(mask)},
        )
        placement = placement_for(self.model, self.device)
        batches = split_forward(self.model, split, self.batch_size, placement)
        out = {t: torch.cat([o["fused"][t] for _, o in batches]).cpu() for t in batches[0][1]["fused"]}
        # Distributions leave the fusion as log-probabilities; softmax recovers them exactly.
        probs = {
            t: (v.float().softmax(-1) if t in DISTRIBUTION_TARGETS else v.float()).numpy().astype(np.float64)
            for t, v in out.items()
        }
        if self.calibrators is not None:
            for target in self.calibrators.targets:
                probs[target] = self.calibrators.apply(target, probs[target])
        return probs

    def methods(self) -> dict[str, str]:
        if self.calibrators is None:
            return {target: "none" for target in CALIBRATED_TARGETS}
        return {target: entry.method for target, entry in self.calibrators.targets.items()}

    def predict_batch(self, records: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """One forward pass for `records` (already checked), one Prediction each."""
        if not records:
            return []
        probs = self.fused([document_text(record) for record in records])
        labels = (probs["verdict"] * self.weights).argmax(axis=1)
        methods = self.methods()
        return [
            named_prediction(probs, row, int(labels[row]), methods, record.get("id"))
            for row, record in enumerate(records)
        ]

    def predict(self, items: str | Iterable[str | Mapping[str, Any]]) -> list[Prediction]:
        """Predictions for one text, texts, or records ({"text", "title"?, "id"?}), in order."""
        records = as_records(items)
        out: list[Prediction] = []
        for start in range(0, len(records), self.batch_size):
            out += self.predict_batch(records[start : start + self.batch_size])
        return out

    def describe(self) -> dict[str, Any]:
        """What this predictor serves: the model, encoder, calibration and decision rule."""
        return {
            "model_dir": str(self.model_dir),
            "preset": self.info.get("preset"),
            "chosen": self.info.get("info", {}).get("candidate", {}).get("name"),
            "encoder": self.info["encoder"],
            "calibration": self.methods(),
            "decision_rule": {"mode": self.mode, **self.rule.modes[self.mode], "classes": list(self.rule.classes)},
        }


def named_prediction(
    probs: dict[str, np.ndarray], row: int, label: int, methods: dict[str, str], record_id: str | None = None
) -> Prediction:
    """One text's outputs by name; `label` is the rule's verdict class index."""
    named = {t.name: dict(zip(t.fields, map(float, probs[t.name][row].reshape(-1)))) for t in TARGETS}
    verdict = probs["verdict"][row]
    return Prediction(
        emotions=named["emotions"],
        bentham_scores=named["bentham_scores"],
        regret_factor=named["regret_factor"]["regret_factor"],
        surd_metrics=named["surd_metrics"],
        verdict=Verdict(VERDICTS[label], VERDICTS[int(verdict.argmax())], named["verdict"]),
        calibration=dict(methods),
        id=record_id,
    )


def load(
    path: str | Path,
    calibrated: bool = True,
    cache_dir: Path | None = None,
    batch_size: int = SERVED_BATCH,
    device: torch.device | str = "auto",
) -> Predictor:
    """A Predictor for the final-model folder `path` (checksums verified, calibrators and rule checked)."""
    return Predictor(path, calibrated=calibrated, cache_dir=cache_dir, batch_size=batch_size, device=device)


# ---- reading inputs -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputRow:
    """One input line: its number, and its record or the problem with it."""

    line: int
    record: dict[str, str] | None
    error: str | None = None


def _parse(raw: str, where: str, number: int) -> InputRow:
    if not raw.lstrip().startswith("{"):
        return InputRow(number, {"text": raw})
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as error:
        return InputRow(number, None, f"{where}:{number}: not valid JSON ({error.msg}, column {error.colno})")
    except RecursionError:
        return InputRow(number, None, f"{where}:{number}: JSON nested too deeply")
    problem = record_problem(record) if isinstance(record, dict) else "expected a JSON object"
    if problem:
        return InputRow(number, None, f"{where}:{number}: {problem}")
    return InputRow(number, {k: record[k] for k in ("id", "title", "text") if record.get(k) is not None})


def iter_inputs(source: str | Path | None, text: str | None = None) -> Iterator[InputRow]:
    """Input rows from one text, a file (JSON Lines with a "text" field, or plain lines, one text each; plain or
    gzip) or stdin (source "-" or None), one at a time. Blank lines are skipped; a bad line is a row with its
    error (file, line, and for bytes that are not UTF-8 their offset)."""
    if text is not None:
        yield InputRow(1, {"text": text})
        return
    if source is None or str(source) == "-":
        binary = getattr(sys.stdin, "buffer", None)
        if binary is None:  # a text stream (as tests give): already decoded
            for number, line in enumerate(sys.stdin, start=1):
                if line.strip():
                    yield _parse(line.rstrip("\r\n"), "stdin", number)
            return
        data = DataFile(cast(io.BufferedReader, binary), "stdin", owned=False)  # stdin stays open
    else:
        data = DataFile.open(source, what="file of texts")
    with data:
        for number, line, error in data.lines():
            if error is not None:
                yield InputRow(number, None, f"{data.name}:{number}: {error}")
            elif line.strip():  # a line of Unicode spaces is no text either
                yield _parse(line, data.name, number)


def read_inputs(source: str | Path | None, text: str | None = None) -> list[dict[str, str]]:
    """Every record of `source` (see iter_inputs) as a list; ValueError naming the first bad line."""
    records = []
    for row in iter_inputs(source, text):
        if row.error is not None:
            raise ValueError(row.error)
        assert row.record is not None
        records.append(row.record)
    return records


# ---- the predict command ----------------------------------------------------------------------------------------


def predict_records(
    predictor: Predictor, records: Iterable[Mapping[str, Any]], batch_size: int = SERVED_BATCH, progress: bool = False
) -> Iterator[dict[str, Any]]:
    """One JSON-ready result per record, in order, computed in batches."""
    rows = (InputRow(i, dict(r)) for i, r in enumerate(records, start=1))
    yield from predict_rows(predictor, rows, batch_size, progress)


def predict_rows(
    predictor: Predictor, rows: Iterable[InputRow], batch_size: int = SERVED_BATCH, progress: bool = False
) -> Iterator[dict[str, Any]]:
    """One result per input row, in order: the prediction, or {"line", "error"} for a bad row. Rows are taken
    `batch_size` at a time, so memory does not depend on how many there are."""
    iterator = iter(rows)
    with tqdm(desc="predict", unit="text", disable=not progress) as bar:
        while chunk := list(islice(iterator, batch_size)):
            good = [row.record for row in chunk if row.record is not None]
            predicted = iter(predictor.predict_batch(good))
            for row in chunk:
                yield next(predicted).to_dict() if row.record is not None else {"line": row.line, "error": row.error}
            bar.update(len(chunk))


def predict_texts(
    model_dir: str | Path,
    texts: list[str],
    calibrated: bool = True,
    batch_size: int = SERVED_BATCH,
    cache_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Named outputs of every text (emotions, bentham_scores, regret_factor, surd_metrics, verdict, calibration)."""
    with Predictor(model_dir, calibrated=calibrated, cache_dir=cache_dir, batch_size=batch_size) as predictor:
        return [p.to_dict() for p in predictor.predict(texts)]


def _first_error(rows: Iterable[InputRow]) -> str | None:
    return next((row.error for row in rows if row.error is not None), None)


def run_predict(
    model_dir: str | Path,
    source: str | Path | None,
    text: str | None = None,
    output: str | Path | None = None,
    calibrated: bool = True,
    batch_size: int = SERVED_BATCH,
    cache_dir: Path | None = None,
    on_error: str = "stop",
    progress: bool = False,
) -> int:
    """The `redheart predict` command's work: one JSON line per input on `output` (written atomically) or
    stdout; returns the number of rows written.

    With on_error "stop" a bad line stops the command with its file and line. A file is checked whole first
    (one streaming pass, nothing kept), so a bad line or corrupt compression is reported before anything is
    written; stdin, which cannot be read twice, stops at the bad line with the rows before it written. With
    on_error "row" a bad line becomes {"line", "error"} in its place and the rest goes on; only an unreadable
    or corrupt file stops it then.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error {on_error!r}: choose one of {ON_ERROR}")
    from_file = text is None and source is not None and str(source) != "-"
    if from_file and on_error == "stop" and (error := _first_error(iter_inputs(source))):
        raise ValueError(error)
    predictor = Predictor(model_dir, calibrated=calibrated, cache_dir=cache_dir, batch_size=batch_size)

    def write(stream: IO[str]) -> int:
        count = 0
        for result in predict_rows(predictor, iter_inputs(source, text), batch_size, progress):
            if "error" in result and on_error == "stop":
                raise ValueError(result["error"])
            stream.write(json.dumps(result, ensure_ascii=False) + "\n")
            count += 1
        return count

    with predictor:
        if output is None:
            return write(sys.stdout)
        with atomic_open(output) as handle:
            return write(handle)
