"""Compare two run folders made by the same commands: a restructuring's proof that behaviour did not change.

Walks every JSON artefact both folders hold (test results, baselines, analysis, crossover candidates, sweep,
calibration, decision rule, the final model's card and config) and every safetensors file (epoch checkpoints,
EMA, final model), and prints, per file, how many numbers and tensors it compared and which differ. Numbers are
compared exactly: on one machine a deterministic run gives the same floats, so any difference is a change.
Strings are compared too and listed apart, since a reworded sentence is not a changed number. Keys that name
where or when a run happened (paths, times, pids, hostnames) are skipped, and measurements of the machine
(throughput, peak memory) are counted apart. A sha256 that differs is counted apart too: safetensors writes a
file's metadata in a per-process order, so identical tensors can give different file bytes; the tensors
themselves are compared.

    python bench/compare_runs.py runs/before runs/after

Exit status 0 when every number and tensor is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

# Keys whose values say where or when, not what: they differ between any two runs.
VOLATILE_KEYS = {
    "time",
    "timestamp",
    "created",
    "started",
    "finished",
    "wall_s",
    "seconds",
    "elapsed_s",
    "pid",
    "host",
    "hostname",
    "path",
    "run",
    "root",
    "command",
    "argv",
    "duration_s",
    "when",
}


# Measurements of the machine the run happened on: they differ between any two runs of the same code.
MEASURED_KEYS = {"samples_per_second", "peak_host_memory_bytes", "at"}
SHA256 = re.compile(r"[0-9a-f]{64}")


def walk(
    a: Any, b: Any, where: str, numbers: list[int], number_diffs: list[str], text_diffs: list[str], sums: list[str]
) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in VOLATILE_KEYS or key.endswith(("_time", "_at", "_seconds", "_path")):
                continue
            if key in MEASURED_KEYS:
                numbers[1] += 1
                continue
            if key not in a or key not in b:
                number_diffs.append(f"{where}.{key}: only in {'after' if key not in a else 'before'}")
                continue
            walk(a[key], b[key], f"{where}.{key}", numbers, number_diffs, text_diffs, sums)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            number_diffs.append(f"{where}: {len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            walk(x, y, f"{where}[{i}]", numbers, number_diffs, text_diffs, sums)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        numbers[0] += 1
        if a != b:
            number_diffs.append(f"{where}: {a!r} vs {b!r}")
    elif isinstance(a, str) and isinstance(b, str) and SHA256.fullmatch(a) and SHA256.fullmatch(b):
        if a != b:
            sums.append(where)
    elif a != b:
        (text_diffs if isinstance(a, str) and isinstance(b, str) else number_diffs).append(f"{where}: {a!r} vs {b!r}")


def compare_json(before: Path, after: Path, rel: Path) -> tuple[list[int], list[str], list[str], list[str]]:
    """([numbers compared, measurements skipped], number differences, string differences, differing sha256s)."""
    numbers = [0, 0]
    number_diffs: list[str] = []
    text_diffs: list[str] = []
    sums: list[str] = []
    a, b = (json.loads((root / rel).read_text(encoding="utf-8")) for root in (before, after))
    walk(a, b, str(rel), numbers, number_diffs, text_diffs, sums)
    return numbers, number_diffs, text_diffs, sums


def compare_tensors(before: Path, after: Path, rel: Path) -> tuple[int, list[str]]:
    a, b = load_file(before / rel), load_file(after / rel)
    diffs = [f"{rel}: keys only on one side: {sorted(set(a) ^ set(b))[:5]}"] if set(a) != set(b) else []
    for key in sorted(set(a) & set(b)):
        if a[key].dtype != b[key].dtype or a[key].shape != b[key].shape or not torch.equal(a[key], b[key]):
            diffs.append(f"{rel}:{key} differs")
    return len(set(a) & set(b)), diffs


def compared_files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.suffix in (".json", ".safetensors")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    before, after = compared_files(args.before), compared_files(args.after)
    totals = {"json files": 0, "numbers": 0, "tensor files": 0, "tensors": 0}
    measured = 0
    failures = [f"{p}: only before" for p in sorted(before - after)] + [
        f"{p}: only after" for p in sorted(after - before)
    ]
    rewordings: list[str] = []
    checksums: list[str] = []
    for rel in sorted(before & after):
        if rel.suffix == ".json":
            (count, skipped), number_diffs, text_diffs, sums = compare_json(args.before, args.after, rel)
            totals["json files"] += 1
            totals["numbers"] += count
            measured += skipped
            failures += number_diffs
            rewordings += text_diffs
            checksums += sums
        else:
            count, diffs = compare_tensors(args.before, args.after, rel)
            totals["tensor files"] += 1
            totals["tensors"] += count
            failures += diffs
    print("compared: " + ", ".join(f"{value:,} {name}" for name, value in totals.items()))
    print(f"not compared: {measured:,} measurements of the machine (throughput, peak memory, times)")
    print(f"sha256 values that differ: {len(checksums):,} (file bytes; tensors and JSON behind them are compared here)")
    for line in checksums[:10]:
        print("  " + line)
    print(f"different numbers or tensors: {len(failures)}")
    for line in failures[:40]:
        print("  " + line)
    print(f"different strings (wording): {len(rewordings)}")
    for line in rewordings[:20]:
        print("  " + line[:300])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
