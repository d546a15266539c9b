"""redheart: the training system for the Red Heart multi-task text model.

`redheart.load(path)` returns a predictor for a final-model folder; its `.predict(texts or records)` gives typed
results (redheart.infer.Prediction). Importing the package stays light: torch and the model load on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redheart.infer import Predictor

__version__ = "0.1.0"
__all__ = ["load", "__version__"]


def load(
    path: str | Path,
    calibrated: bool = True,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
) -> Predictor:
    """A predictor for the final-model folder `path`: checksums verified, calibrators and the verdict's decision
    rule checked against the weights. `calibrated=False` serves the raw distributions (and the rule fitted on
    them); `cache_dir` is the embedding cache (default: $REDHEART_CACHE or ~/.cache/redheart); `device`: where
    the model runs ("auto": a GPU where there is one, "cpu", "cuda:0", ...)."""
    from redheart.infer import load as load_predictor

    return load_predictor(path, calibrated, None if cache_dir is None else Path(cache_dir), batch_size, device)
