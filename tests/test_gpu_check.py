"""bench/gpu_check.py in CI: its dry run takes the GPU check's path on CPU (tiny preset, no CUDA call), so the
command a GPU machine runs cannot rot; and the check fails when a strategy goes over its cap."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402

from redheart.config import preset  # noqa: E402
from redheart.train.memory.plan import DEFAULT_RESERVE, GiB, plan_for_config  # noqa: E402

LIGHT = ["--dry-run", "--windows", "1", "--accumulation", "2", "--small-records", "40"]


def dry_run(out: Path, *extra: str) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), str(out), *LIGHT, *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert (out / "gpu_check.json").exists(), done.stderr[-2000:]
    return done.returncode, json.loads((out / "gpu_check.json").read_text())


def test_the_dry_run_trains_every_strategy_runs_the_pipeline_and_torchrun(tmp_path):
    code, report = dry_run(tmp_path)
    assert code == 0, report
    assert report["preset"] == "tiny" and report["device"] == "cpu (dry run)" and report["limit_bytes"] == 8 * GiB
    rows = {row["strategy"]: row for row in report["strategies"]}
    assert list(rows) == ["standard", "saving", "swap"]  # the tiny model fits 8 GiB with every strategy
    for row in rows.values():
        assert row["ok"] and row["capped"] and row["within_limit"] is True
        assert row["samples_per_second"] > 0 and row["timed_samples"] == 4 * 2
        assert 0 < row["plan_device_bytes"] < row["max_memory_reserved"] <= 8 * GiB  # the host's RSS stands in
    assert report["nccl"]["result"] == {
        "backend": "gloo",
        "world_size": 1,
        "all_reduce": 1.0,
        "expected": 1.0,
        "gathered": ["rank0"],
        "ok": True,
    }
    small = report["small"]
    assert small["ok"] and small["report"] and small["preset"] == "tiny" and small["samples_per_second"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| strategy | cap | plan on device (GiB) | max allocated (GiB) | max reserved (GiB) | samples/s |" in table
    assert all(f"| {name} | 8 GiB |" in table for name in rows)


def test_a_strategy_over_its_cap_fails_the_check(tmp_path):
    # 64 MiB holds the tiny plan's bytes but not the process that trains it (torch alone takes more).
    code, report = dry_run(
        tmp_path, "--parts", "strategies", "--strategies", "saving", "--limit", "64MiB", "--reserve", "0"
    )
    assert code == 1
    assert report["over_limit"] == ["saving"] and report["failed"] == [] and "nccl" not in report
    assert "Over the cap although the plan says they fit: saving." in (tmp_path / "gpu_check.md").read_text()


def test_an_out_of_memory_death_counts_as_over_the_cap_and_other_deaths_as_failures():
    died = {"ok": False, "seconds": 9.0, "error": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"}
    crashed = {"ok": False, "seconds": 9.0, "error": "ImportError: bitsandbytes"}
    retried = {
        "ok": True,
        "seconds": 9.0,
        "result": {"max_memory_reserved": GiB, "out_of_memory_retries": [{"epoch": 0, "micro_batch": 2}]},
    }
    fine = {"ok": True, "seconds": 9.0, "result": {"max_memory_reserved": 8 * GiB, "out_of_memory_retries": []}}
    within = {
        name: gpu_check.strategy_row("saving", True, 1, 0, outcome, 8 * GiB)["within_limit"]
        for name, outcome in {"died": died, "crashed": crashed, "retried": retried, "fine": fine}.items()
    }
    assert within == {"died": False, "crashed": None, "retried": False, "fine": True}
    assert gpu_check.strategy_row("standard", False, 1, 0, died, 8 * GiB)["within_limit"] is None  # not capped


@pytest.mark.parametrize(
    ("card", "expected"),
    [
        (None, [("saving", True), ("swap", True)]),  # the plan's 8 GiB alone
        (12 * GiB, [("saving", True), ("swap", True)]),  # standard needs about 15 GiB
        (141 * GiB, [("saving", True), ("swap", True), ("standard", False)]),  # an H200: standard too, uncapped
    ],
)
def test_the_full_preset_strategies_a_card_is_checked_with(card, expected, full_plan):
    assert gpu_check.chosen_strategies(full_plan, card) == expected


@pytest.fixture(scope="module")
def full_plan():
    settings = gpu_check.Settings(Path("unused"), False, 8 * GiB, DEFAULT_RESERVE, gpu_check.PARTS, (), 2, 4, 16, 2000)
    config = gpu_check.strategy_config(settings, "auto")
    assert config.preset == "full" and config.train.micro_batch == 4 and config.train.accumulation == 16
    assert config.train.amp and config.encoder.dim == preset("full").encoder.dim
    return plan_for_config(config, 8 * GiB, DEFAULT_RESERVE)
