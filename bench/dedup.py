"""Time near-duplicate removal.

Default: `near_duplicates` on the bundled set, then it and the reference loop on the first N texts
(--subset, 800), their ratio and whether they agree.

--large: the MinHash LSH method (redheart/data/minhash_dedup.py) on the Scruples superset (--path):
its time per stage, the pairs left at each stage, and the process's peak resident memory
(ru_maxrss, which includes the texts read). Then it and the exact `near_duplicates` on the first N
texts (--subset, 5000), and again on those texts plus copies of some of them edited at random
positions until fuzz.ratio is just above each of several levels around the threshold: real texts have
few near-duplicates, so the planted copies are what measures recall.

    python bench/dedup.py [--subset N]
    python bench/dedup.py --large [--subset N] [--path texts.jsonl.gz]
"""

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout, installed or not

from rapidfuzz import fuzz  # noqa: E402

from redheart.config import DataConfig  # noqa: E402
from redheart.core.host_memory import peak_host_memory_bytes  # noqa: E402
from redheart.data.dedup import near_duplicates, reference_near_duplicates  # noqa: E402
from redheart.data.minhash_dedup import candidate_pairs, keep_first, minhash_near_duplicates, read_texts  # noqa: E402
from redheart.data.records import load_records  # noqa: E402
from redheart.data.schema import bundled_data_path  # noqa: E402

LARGE_SET = Path(__file__).resolve().parent / "data" / "scruples_texts_30k.jsonl.gz"  # shipped, see data/README.md
LEVELS = (85, 88, 90, 91, 92, 93, 94, 96, 98)  # fuzz.ratio of the planted copies to their source
COPIES_PER_LEVEL = 40


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def peak_mib() -> float:
    return peak_host_memory_bytes() / 2**20


def bundled(subset: int, threshold: float) -> None:
    texts = [record["text"] for record in load_records(bundled_data_path(), DataConfig()).records]
    full, full_seconds = timed(near_duplicates, texts, threshold)
    print(f"near_duplicates, whole set ({len(texts)} texts): {full_seconds:.1f}s, {len(full.removed)} removed")
    fast, fast_seconds = timed(near_duplicates, texts[:subset], threshold)
    slow, slow_seconds = timed(reference_near_duplicates, texts[:subset], threshold)
    print(
        f"first {subset} texts: near_duplicates {fast_seconds:.2f}s, reference loop {slow_seconds:.2f}s, "
        f"ratio {slow_seconds / fast_seconds:.1f}x, results agree: {fast == slow} ({len(fast.removed)} removed)"
    )


def large(path: Path, subset: int, threshold: float) -> None:
    texts = read_texts(path)
    print(f"{len(texts)} texts from {path}; peak RSS after reading them {peak_mib():.0f} MiB")
    candidates, lsh_seconds = timed(candidate_pairs, texts, threshold)
    result, verify_seconds = timed(keep_first, texts, candidates.pairs, threshold)
    print(
        f"minhash, all texts: {lsh_seconds + verify_seconds:.1f}s (LSH and bounds {lsh_seconds:.1f}s, fuzz.ratio "
        f"{verify_seconds:.1f}s), {len(result.removed)} removed; {candidates.collisions} band collisions, "
        f"{len(candidates.pairs)} pairs left by the length and character-count bounds; peak RSS {peak_mib():.0f} MiB"
    )
    base = texts[:subset]
    compare(f"first {len(base)} texts", base, threshold)
    copies, levels = planted(base, random.Random(0))
    mine, exact = compare(f"first {len(base)} + {len(copies)} planted", base + copies, threshold)
    for level in LEVELS:
        planted_here = {len(base) + k for k, copy_level in enumerate(levels) if copy_level == level}
        found = [sum(d.removed in planted_here for d in r.removed) for r in (exact, mine)]
        print(f"  copies edited down to fuzz.ratio {level}: exact removes {found[0]}, minhash {found[1]}")
    shared = len(set(mine.removed) & set(exact.removed))
    print(f"  recall of minhash against exact: {shared}/{len(exact.removed)}")


def compare(name: str, texts: list[str], threshold: float):
    mine, mine_seconds = timed(minhash_near_duplicates, texts, threshold)
    exact, exact_seconds = timed(near_duplicates, texts, threshold)
    print(
        f"{name}: minhash {mine_seconds:.1f}s ({len(mine.removed)} removed), near_duplicates "
        f"{exact_seconds:.1f}s ({len(exact.removed)} removed), equal: {mine == exact}; peak RSS {peak_mib():.0f} MiB"
    )
    return mine, exact


def planted(texts: list[str], rng: random.Random) -> tuple[list[str], list[int]]:
    """COPIES_PER_LEVEL edited copies of random texts (50+ characters) per level, and each copy's level."""
    sources = [t for t in texts if len(t) >= 50]
    copies, levels = [], []
    for level in LEVELS:
        for source in rng.sample(sources, COPIES_PER_LEVEL):
            copies.append(edited_down_to(source, level, rng))
            levels.append(level)
    return copies, levels


def edited_down_to(text: str, level: float, rng: random.Random) -> str:
    """`text` with the most of a random sequence of edits that keeps fuzz.ratio >= level (binary search)."""
    edits = [(rng.choice("sid"), rng.random(), rng.choice("abcdefghijklmnopqrstuvwxyz ")) for _ in range(len(text))]
    low, high = 0, len(edits)
    while low < high:
        middle = (low + high + 1) // 2
        if fuzz.ratio(text, apply(text, edits[:middle])) >= level:
            low = middle
        else:
            high = middle - 1
    return apply(text, edits[:low])


def apply(text: str, edits: list[tuple[str, float, str]]) -> str:
    chars = list(text)
    for kind, where, char in edits:
        at = int(where * len(chars))
        if kind == "i":
            chars.insert(at, char)
        elif chars and kind == "d":
            del chars[min(at, len(chars) - 1)]
        elif chars:
            chars[min(at, len(chars) - 1)] = char
    return "".join(chars)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="the MinHash method on the Scruples superset")
    parser.add_argument("--subset", type=int, help="texts compared with the exact method (800; 5000 with --large)")
    parser.add_argument("--path", type=Path, default=LARGE_SET, help="JSON Lines texts for --large")
    args = parser.parse_args()
    threshold = DataConfig().dedup_threshold
    if args.large:
        large(args.path, args.subset or 5000, threshold)
    else:
        bundled(args.subset or 800, threshold)


if __name__ == "__main__":
    main()
