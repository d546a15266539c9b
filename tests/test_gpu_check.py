"""bench/gpu_check.py in CI: its dry run takes the GPU check's path on CPU (tiny preset, no CUDA call), so the
command a GPU machine runs cannot rot; the check fails when a strategy goes over its cap, and the cap is what an
8 GiB card leaves after the CUDA context."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402

from redheart.cli import main  # noqa: E402
from redheart.config import preset  # noqa: E402
from redheart.train.memory.plan import DEFAULT_RESERVE, GiB, plan_for_config  # noqa: E402

MiB = 2**20

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


def test_the_dry_run_trains_every_strategy_runs_the_pipeline_the_suite_and_torchrun(tmp_path, capsys):
    code, report = dry_run(tmp_path)
    assert code == 0, report
    assert report["preset"] == "tiny" and report["device"] == "cpu (dry run)" and report["limit_bytes"] == 8 * GiB
    rows = {row["strategy"]: row for row in report["strategies"]}
    assert list(rows) == ["standard", "saving", "swap"]  # the tiny model fits 8 GiB with every strategy
    for row in rows.values():
        assert row["ok"] and row["capped"] and row["within_limit"] is True
        assert row["samples_per_second"] > 0 and row["timed_samples"] == 4 * 2
        # The cap is the limit less the plan's reserve; no context is measured without CUDA.
        assert (
            row["cap_bytes"] == row["plan_budget_bytes"] == 8 * GiB - DEFAULT_RESERVE and row["context_bytes"] is None
        )
        assert 0 < row["plan_device_bytes"] < row["max_memory_reserved"] <= row["cap_bytes"]  # the host's RSS stands in
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
    suite = report["suite"]  # `pytest -m cuda`: every test skips without CUDA
    assert suite["ok"] and suite["passed"] == suite["failed"] == 0 and suite["skipped"] >= 1
    # The parts' times and the parent's own add up to the wall time.
    assert set(report["timings"]) == {
        "startup and plan",
        "nccl",
        *(f"strategy {name}" for name in rows),
        "suite",
        "small",
        "other (report, clean-up)",
    }
    assert sum(report["timings"].values()) == pytest.approx(report["wall_seconds"], rel=1e-9)
    table = (tmp_path / "gpu_check.md").read_text()
    assert "Cap: 8.00 GiB card - 0.50 GiB plan reserve = 7.50 GiB;" in table
    assert (
        "| strategy | cap (GiB) | context (GiB) | plan on device (GiB) | max allocated (GiB) | max reserved (GiB) |"
        in table
    )
    assert all(f"| {name} | 7.50 | — |" in table for name in rows)
    # The measured bytes are a correction the planner reads and names.
    main(["memory", "--preset", "tiny", "--set", "train.micro_batch=4", "--correction", report["correction_file"]])
    assert f"measured correction {report['correction_file']} (cpu (dry run), preset tiny" in capsys.readouterr().out


# Slow (a training process under a 64 MiB cap): the default run keeps the over-cap rules row by row (the tests
# around it) and the whole dry run; this one checks the exit code and the Markdown line end to end.
@pytest.mark.slow
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
    cap = {"cap_bytes": 7 * GiB, "context_after_bytes": GiB // 2}
    retried["result"].update(cap)
    fine = {"ok": True, "seconds": 9.0, "result": {"max_memory_reserved": 7 * GiB, "out_of_memory_retries": [], **cap}}
    within = {
        name: gpu_check.strategy_row("saving", True, 1, 0, outcome, 8 * GiB)["within_limit"]
        for name, outcome in {"died": died, "crashed": crashed, "retried": retried, "fine": fine}.items()
    }
    assert within == {"died": False, "crashed": None, "retried": False, "fine": True}
    assert gpu_check.strategy_row("standard", False, 1, 0, died, 8 * GiB)["within_limit"] is None  # not capped


def test_the_cap_is_what_the_plan_may_use_or_what_the_measured_context_leaves():
    # A card of 8 GiB: the plan keeps 0.5 GiB for the context, so torch may hold 7.5 GiB, not 8.
    assert gpu_check.Cap(8 * GiB, GiB // 2).bytes == 8 * GiB - GiB // 2
    # A context measured at 300 MiB fits the reserve: the plan's budget is the cap.
    small = gpu_check.Cap(8 * GiB, GiB // 2, context=300 * MiB)
    assert small.card_left == 8 * GiB - 300 * MiB and small.bytes == small.plan_budget == 8 * GiB - GiB // 2
    # A context measured at 700 MiB does not: the card leaves 7.32 GiB, and that is the cap.
    large = gpu_check.Cap(8 * GiB, GiB // 2, context=700 * MiB)
    assert large.bytes == large.card_left == 8 * GiB - 700 * MiB < large.plan_budget
    assert large.describe() == (
        "8.00 GiB card - 0.50 GiB plan reserve = 7.50 GiB; 8.00 GiB card - 0.68 GiB measured CUDA context = "
        "7.32 GiB; cap (the smaller) 7.32 GiB"
    )


def test_a_run_at_its_cap_but_over_the_card_with_its_context_is_over():
    # 7.5 GiB reserved is within a 7.5 GiB cap, but with a context that grew to 0.7 GiB it needs 8.2 GiB.
    result = {"max_memory_reserved": 7 * GiB + GiB // 2, "cap_bytes": 7 * GiB + GiB // 2, "out_of_memory_retries": []}
    assert gpu_check.within_cap({**result, "context_after_bytes": 300 * MiB}, 8 * GiB)
    assert not gpu_check.within_cap({**result, "context_after_bytes": 700 * MiB}, 8 * GiB)


def test_the_time_shares_add_up_to_the_wall_limit_of_nine_minutes():
    shares = dict(gpu_check.SHARES)
    total = sum(shares.values()) + (gpu_check.MAX_STRATEGIES - 1) * shares["strategy"]
    assert total == gpu_check.WALL_SECONDS <= 9 * 60


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
