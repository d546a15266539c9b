"""`redheart predict`: the final model's fused outputs for new texts, by name, calibrated by default.

The model comes from a final-model folder (redheart.select.final_model: safetensors + JSON, checksums
verified); its texts are embedded by the encoder its config.json names, through the embedding cache, so
a text seen in training gets the vectors training used. Distributions are calibrated with the folder's
calibrators.json (written by redheart.evaluate.calibration.fit_calibrators; the method chosen per target on
validation), unless `calibrated=False`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from redheart.config import EncoderConfig
from redheart.core.checkpoint_files import MANIFEST, CheckpointError, sha256
from redheart.data.dataset import SplitTensors
from redheart.data.encode import encode_texts
from redheart.data.encoders import build_encoder, document_text
from redheart.data.schema import BENTHAM_KEYS, DISTRIBUTION_TARGETS, EMOTIONS, SURD_KEYS, VERDICTS
from redheart.evaluate.calibration import CALIBRATED_TARGETS, CALIBRATORS_FILE, load_calibrators
from redheart.select.final_model import load_final_model
from redheart.train.evaluation import placement_for, split_forward

PREDICT_BATCH = 256  # texts per forward pass
NAMES = {"emotions": EMOTIONS, "bentham_scores": BENTHAM_KEYS, "surd_metrics": SURD_KEYS, "verdict": VERDICTS}


def read_inputs(source: str | Path | None, text: str | None = None) -> list[dict[str, str]]:
    """Records {"text", "title"?, "id"?} from one text, a file (JSON Lines with a "text" field, or plain
    lines, one text each) or stdin (source "-" or None)."""
    if text is not None:
        return [{"text": text}]
    if source is None or str(source) == "-":
        lines, name = sys.stdin.read().splitlines(), "stdin"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file of texts")
        lines, name = path.read_text(encoding="utf-8").splitlines(), str(path)
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{name}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record.get("text"), str):
                raise ValueError(f"{name}:{number}: field 'text' must be a string")
            if record.get("title") is not None and not isinstance(record["title"], str):
                raise ValueError(f"{name}:{number}: field 'title' must be a string")
            records.append({k: record[k] for k in ("id", "title", "text") if record.get(k) is not None})
        else:
            records.append({"text": line})
    return records


class Predictor:
    """A loaded final model, its encoder and (optionally) its calibrators."""

    def __init__(
        self,
        model_dir: str | Path,
        calibrated: bool = True,
        cache_dir: Path | None = None,
        device: torch.device | str = "auto",
    ) -> None:
        """`device`: where the model runs ("auto": a GPU where there is one, whole or one group at a time as
        its memory allows; train.evaluation.placement_for)."""
        self.model_dir = Path(model_dir)
        self.device = device
        self.model, self.info = load_final_model(self.model_dir)
        placement = placement_for(self.model, device)
        if placement.device.type == "cuda" and not placement.by_group:  # it fits: moved once, not per call
            self.model.to(placement.device)
        encoder_config = EncoderConfig(**self.info["encoder"])
        self.encoder = build_encoder(encoder_config)
        if (self.encoder.dim, self.encoder.max_segments) != (self.info["input_dim"], self.info["max_segments"]):
            raise CheckpointError(
                f"{self.model_dir / 'config.json'}: encoder {self.encoder.key} gives "
                f"{self.encoder.max_segments}x{self.encoder.dim}"
                f" vectors, the model expects {self.info['max_segments']}x{self.info['input_dim']}"
            )
        self.cache_dir = cache_dir
        self.calibrators = None
        if calibrated:
            path = self.model_dir / CALIBRATORS_FILE
            if not path.exists():
                raise FileNotFoundError(
                    f"{path}: this model has no calibrators; fit them (redheart calibrate) or predict uncalibrated"
                )
            self.calibrators = load_calibrators(path)
            if self.calibrators.model_sha256 != sha256(self.model_dir / MANIFEST):
                raise CheckpointError(
                    f"{path}: fitted for another model (manifest sha256 differs); fit them again for this one"
                )

    @torch.no_grad()
    def fused(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Fused outputs of a batch: probabilities (N, K) for distributions, values (N, k) otherwise."""
        vectors, mask = encode_texts(texts, self.encoder, cache_dir=self.cache_dir)
        split = SplitTensors(
            "predict",
            tuple(map(str, range(len(texts)))),
            {"x": torch.from_numpy(vectors), "mask": torch.from_numpy(mask)},
        )
        placement = placement_for(self.model, self.device)
        batches = split_forward(self.model, split, PREDICT_BATCH, placement)
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


def named_outputs(probs: dict[str, np.ndarray], row: int) -> dict[str, Any]:
    """One text's outputs keyed by name, in schema order."""
    out: dict[str, Any] = {}
    for target in ("emotions", "bentham_scores", "regret_factor", "surd_metrics", "verdict"):
        values = probs[target][row].reshape(-1)
        out[target] = (
            float(values[0]) if target == "regret_factor" else {n: float(v) for n, v in zip(NAMES[target], values)}
        )
    return out


def predict_records(
    predictor: Predictor, records: list[dict[str, str]], batch_size: int = 64, progress: bool = False
) -> Iterable[dict[str, Any]]:
    """One result per record, in order, computed in batches."""
    methods = predictor.methods()
    with tqdm(total=len(records), desc="predict", unit="text", disable=not progress) as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            probs = predictor.fused([document_text(record) for record in batch])
            for row, record in enumerate(batch):
                keep = {k: record[k] for k in ("id",) if k in record}
                yield {**keep, **named_outputs(probs, row), "calibration": methods}
            bar.update(len(batch))


def predict_texts(
    model_dir: str | Path,
    texts: list[str],
    calibrated: bool = True,
    batch_size: int = 64,
    cache_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Named outputs of every text (emotions, bentham_scores, regret_factor, surd_metrics, verdict, calibration)."""
    predictor = Predictor(model_dir, calibrated=calibrated, cache_dir=cache_dir)
    return list(predict_records(predictor, [{"text": text} for text in texts], batch_size))


def write_predictions(
    model_dir: str | Path,
    records: list[dict[str, str]],
    stream: IO[str] = sys.stdout,
    calibrated: bool = True,
    batch_size: int = 64,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> int:
    """The `redheart predict` command's work: one JSON line per record on `stream`; returns the count."""
    predictor = Predictor(model_dir, calibrated=calibrated, cache_dir=cache_dir)
    count = 0
    for result in predict_records(predictor, records, batch_size, progress):
        stream.write(json.dumps(result, ensure_ascii=False) + "\n")
        count += 1
    return count
