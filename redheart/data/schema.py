"""The bundled data sets shipped inside the package (the targets' field names are in redheart.architecture)."""

from importlib import resources
from pathlib import Path


def bundled_data_path() -> Path:
    """The 9,842-record Red Heart set shipped inside the package (the default input)."""
    return Path(str(resources.files("redheart.data") / "redheart_scruples.json.gz"))


def bundled_verdicts_path() -> Path:
    """The 13,362 community verdicts (vote counts, no other target) shipped inside the package."""
    return Path(str(resources.files("redheart.data") / "scruples_verdicts_13k.jsonl.gz"))
