"""The record schema: field names, their fixed orders, and the bundled data set."""

from importlib import resources
from pathlib import Path

# The order is part of the data format: the i-th float of `emotions` is EMOTIONS[i].
EMOTIONS = ("joy", "trust", "fear", "surprise", "sadness", "disgust", "anger")
VERDICTS = ("AUTHOR", "OTHER", "EVERYBODY", "NOBODY", "INFO")
BENTHAM_KEYS = ("intensity", "duration", "certainty", "propinquity")
SURD_KEYS = ("selection", "uncertainty", "risk", "decision")

# Targets the model learns, with their width; a clean record holds each as a list of floats or None.
TARGET_DIMS = {
    "emotions": len(EMOTIONS),
    "bentham_scores": len(BENTHAM_KEYS),
    "regret_factor": 1,
    "surd_metrics": len(SURD_KEYS),
    "verdict": len(VERDICTS),
}
# Targets that are probability distributions (soft labels, softmax outputs); the others are regressions.
DISTRIBUTION_TARGETS = ("emotions", "verdict")


def bundled_data_path() -> Path:
    """The 9,842-record Red Heart set shipped inside the package (the default input)."""
    return Path(str(resources.files("redheart.data") / "redheart_scruples.json.gz"))


def bundled_verdicts_path() -> Path:
    """The 13,362 community verdicts (vote counts, no other target) shipped inside the package."""
    return Path(str(resources.files("redheart.data") / "scruples_verdicts_13k.jsonl.gz"))
