"""Time the project's near-duplicate removal against the reference loop on the bundled set.

Prints the time of `near_duplicates` on the whole set, then both implementations on the same subset
(the first N texts, N = 800 unless given as the first argument), their ratio and whether they agree.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout, installed or not

from redheart.config import DataConfig  # noqa: E402
from redheart.data.dedup import near_duplicates, reference_near_duplicates  # noqa: E402
from redheart.data.records import load_records  # noqa: E402
from redheart.data.schema import bundled_data_path  # noqa: E402


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main() -> None:
    subset = int(sys.argv[1]) if len(sys.argv) > 1 else 800
    config = DataConfig()
    texts = [record["text"] for record in load_records(bundled_data_path(), config).records]
    full, full_seconds = timed(near_duplicates, texts, config.dedup_threshold)
    print(f"near_duplicates, whole set ({len(texts)} texts): {full_seconds:.1f}s, {len(full.removed)} removed")
    fast, fast_seconds = timed(near_duplicates, texts[:subset], config.dedup_threshold)
    slow, slow_seconds = timed(reference_near_duplicates, texts[:subset], config.dedup_threshold)
    print(f"first {subset} texts: near_duplicates {fast_seconds:.2f}s, reference loop {slow_seconds:.2f}s, "
          f"ratio {slow_seconds / fast_seconds:.1f}x, results agree: {fast == slow} ({len(fast.removed)} removed)")


if __name__ == "__main__":
    main()
