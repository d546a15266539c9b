"""The full preset on a real GPU in one command: memory per strategy under an 8 GiB card's cap, speed, the CUDA
test suite, a small pipeline end to end, and nccl under torchrun. Results go to OUT/gpu_check.json and
OUT/gpu_check.md, and the measured bytes per strategy to OUT/memory_correction.json
(`redheart memory --correction OUT/memory_correction.json` plans with them).

    python bench/gpu_check.py OUT            # on a CUDA machine; 9 minutes at most (the parts' time shares)
    python bench/gpu_check.py OUT --dry-run  # the same code path on CPU: tiny preset, no CUDA call

Parts, each in its own process (peak memory is per process, and a crash or a timeout stays in its part):

1. strategies: the memory plan of the preset at micro-batch x accumulation for a card of --limit (8 GiB).
   Every strategy the plan says fits is trained with torch's allocator capped (set_per_process_memory_fraction)
   at what the plan lets it use on such a card, whatever this card's size: the limit less the plan's reserve
   for the CUDA context (0.5 GiB), or the limit less the context measured in the process
   (torch.cuda.mem_get_info) when that is larger; both figures are reported. `standard` is trained too,
   uncapped, when the card is large enough for the plan's figure. Each runs the project's own `train()` for
   two epochs of --windows optimizer steps on a synthetic run of 384-wide hashing embeddings (the full
   model's input size), without resume saves (23 GB each for the full preset): the first epoch is the
   warm-up, the second is timed. Printed: the plan's device bytes, max_memory_allocated and
   max_memory_reserved, samples/s, and whether the process stayed within the cap (reserved bytes at most the
   cap, reserved plus the context measured after training at most the limit, and no out-of-memory retry).
2. suite: `pytest -m cuda` (tests/test_cuda.py and the other CUDA tests), one process.
3. small: `redheart pipeline` with the small preset on the first --small-records records of the bundled set,
   a one-trial, one-epoch sweep and one epoch of training, end to end to the report, on the GPU.
4. nccl: torchrun with one process initialises the nccl process group and checks an all_reduce, a barrier
   and an all_gather_object, the collectives the trainer uses (gloo on CPU in the dry run).

Each part stops at its time share (SHARES, which add up to WALL_SECONDS); the report's `timings` add up to
its wall time. The exit status is 1 when a strategy that the plan calls fitting went over the cap, 2 when a
part failed or ran out of its time, else 0. In the dry run the host stands in for the device: the peak
resident set is reported as both allocated and reserved, no context is measured, and nothing is capped.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the imports: the report's timings cover the whole process

import argparse  # noqa: E402
import gzip  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, cast  # noqa: E402
from xml.etree import ElementTree  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # runnable from a checkout

import torch  # noqa: E402

from redheart.config import DataConfig, RunConfig, preset, with_overrides  # noqa: E402
from redheart.core.atomic import atomic_open, write_json, write_jsonl  # noqa: E402
from redheart.core.host_memory import peak_host_memory_bytes  # noqa: E402
from redheart.core.rundir import RunDir  # noqa: E402
from redheart.data.encode import encode_run  # noqa: E402
from redheart.data.records import normalize_record  # noqa: E402
from redheart.data.schema import bundled_data_path  # noqa: E402
from redheart.train.memory.plan import (  # noqa: E402
    DEFAULT_RESERVE,
    GiB,
    MemoryPlan,
    parse_bytes,
    plan_for_config,
    write_correction,
)

# Seconds of each part; at most three strategies run (saving and swap capped, standard uncapped on a large
# card). The shares add up to the whole check, and a part gets what is left of it, up to its own share.
SHARES = {"startup and plan": 25, "nccl": 25, "strategy": 90, "suite": 150, "small": 70}
MAX_STRATEGIES = 3
WALL_SECONDS = sum(SHARES.values()) + (MAX_STRATEGIES - 1) * SHARES["strategy"]  # 540 s, 9 minutes
PARTS = ("nccl", "strategies", "suite", "small")
# The dry run checks the path, not the time: a CPU runs the tiny preset in about what a GPU takes for the full
# one, and a shared CI machine may run it several times slower still.
DRY_RUN_SLACK = 4


@dataclass(frozen=True)
class Settings:
    out: Path
    dry_run: bool
    limit: int
    reserve: int
    parts: tuple[str, ...]
    only: tuple[str, ...]  # strategies to check (empty: every one the plan chooses)
    windows: int
    micro_batch: int
    accumulation: int
    small_records: int

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    @property
    def preset(self) -> str:
        return "tiny" if self.dry_run else "full"

    def child_args(self) -> list[str]:
        return [
            str(self.out),
            "--limit",
            str(self.limit),
            "--reserve",
            str(self.reserve),
            "--windows",
            str(self.windows),
            "--micro-batch",
            str(self.micro_batch),
            "--accumulation",
            str(self.accumulation),
            "--small-records",
            str(self.small_records),
        ] + (["--dry-run"] if self.dry_run else [])


def strategy_config(settings: Settings, strategy: str) -> RunConfig:
    """The preset with hashing embeddings at its own width, the strategy forced, telemetry off (it resets the
    device's peak statistics every epoch; this check wants the process's peak)."""
    config = preset(settings.preset)
    return with_overrides(
        config,
        {
            "encoder.name": "hashing",
            "train.device": settings.device,
            "train.memory": strategy,
            "train.amp": not settings.dry_run,
            "train.micro_batch": settings.micro_batch,
            "train.accumulation": settings.accumulation,
            "train.telemetry": False,
        },
    )


def chosen_strategies(plan: MemoryPlan, card: int | None) -> list[tuple[str, bool]]:
    """(strategy, capped) pairs: every strategy the plan fits within its budget, capped; standard uncapped as
    well when the card (None in the dry run) holds the plan's figure and the reserve."""
    out = [(f.strategy.name, True) for f in plan.footprints if f.device_total <= plan.budget]
    standard = plan.footprint("standard")
    if card is not None and ("standard", True) not in out and standard.device_total + plan.reserve <= card:
        out.append(("standard", False))
    return out


# ---- the cap, and the device or the host standing in for it ---------------------------------------------------


@dataclass(frozen=True)
class Cap:
    """What torch's allocator may hold on a card of `limit` bytes. The plan keeps `reserve` for the CUDA
    context (which the allocator does not count); where the context was measured (`context`, the bytes the
    card holds beyond torch's own after a first kernel) and is larger, the card leaves less, and the cap is
    that. Both figures are reported."""

    limit: int
    reserve: int
    context: int | None = None  # None: not measured (the dry run)

    @property
    def plan_budget(self) -> int:
        """The limit less the plan's reserve: what the plan lets a strategy use."""
        return self.limit - self.reserve

    @property
    def card_left(self) -> int | None:
        """The limit less the measured context: what a card of `limit` bytes leaves to torch."""
        return None if self.context is None else self.limit - self.context

    @property
    def bytes(self) -> int:
        left = self.card_left
        return self.plan_budget if left is None else min(self.plan_budget, left)

    def describe(self) -> str:
        card = f"{self.limit / GiB:.2f} GiB card"
        text = f"{card} - {self.reserve / GiB:.2f} GiB plan reserve = {self.plan_budget / GiB:.2f} GiB"
        if self.context is None:
            return f"{text}; CUDA context not measured (no CUDA in a dry run); cap {self.bytes / GiB:.2f} GiB"
        return (
            f"{text}; {card} - {self.context / GiB:.2f} GiB measured CUDA context = "
            f"{cast(int, self.card_left) / GiB:.2f} GiB; cap (the smaller) {self.bytes / GiB:.2f} GiB"
        )


class CudaMemory:
    def __init__(self) -> None:
        self.device = torch.device("cuda", 0)

    def total(self) -> int:
        return torch.cuda.get_device_properties(self.device).total_memory

    def context(self) -> int:
        """Bytes the card holds beyond what torch's allocator reserved: the CUDA context, the loaded kernels
        and the libraries' handles (on a card this process has to itself)."""
        torch.cuda.synchronize(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free - torch.cuda.memory_reserved(self.device)

    def warm_up(self) -> None:
        """Load what every training step loads (cuBLAS, cuDNN, a bf16 kernel), so the context is measured whole."""
        x = torch.randn(64, 64, device=self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            torch.nn.functional.layer_norm(x @ x, (64,)).softmax(-1).sum().item()
        torch.nn.GRU(64, 64, device=self.device)(x[None])[0].sum().item()

    def cap(self, limit: int) -> None:
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit / self.total()), self.device)

    def peaks(self) -> tuple[int, int]:
        return torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device)


class HostMemory:
    """The dry run's device: the host, never capped; its peak resident set stands for both peaks."""

    def total(self) -> None:
        return None

    def context(self) -> None:
        return None

    def warm_up(self) -> None:
        return None

    def cap(self, limit: int) -> None:
        return None

    def peaks(self) -> tuple[int, int]:
        rss = peak_host_memory_bytes() or 0
        return rss, rss


def memory_of(settings: Settings) -> CudaMemory | HostMemory:
    return HostMemory() if settings.dry_run else CudaMemory()


# ---- part 1: a strategy, in its own process -------------------------------------------------------------------


def synthetic_run(root: Path, config: RunConfig, train_size: int) -> RunDir:
    """Bundled records as a prepared run folder: `train_size` to train on, 8 to validate, 8 for test."""
    run = RunDir(root)
    records = bundled_records(train_size + 16)
    write_jsonl(run.clean_records, records)
    ids = [r["id"] for r in records]
    write_json(
        run.split_manifest, {"train": ids[:train_size], "val": ids[train_size : train_size + 8], "test": ids[-8:]}
    )
    encode_run(run, config.encoder, cache_dir=root / "cache", progress=False)
    return run


def bundled_records(count: int, clean: bool = True) -> list[dict[str, Any]]:
    """The first `count` valid records of the bundled set; `clean` as the data phase writes them (validated and
    normalised), else as they are in the input."""
    with gzip.open(bundled_data_path(), "rt", encoding="utf-8") as handle:
        raw = json.load(handle)
    if not clean:
        return raw[:count]
    records = (normalize_record(value, DataConfig())[0] for value in raw)
    return list(itertools.islice((r for r in records if r is not None), count))


def strategy_child(settings: Settings, strategy: str, capped: bool) -> dict[str, Any]:
    from redheart.train.recipe import train
    from redheart.train.telemetry.records import read_metrics

    memory = memory_of(settings)
    memory.warm_up()
    cap = Cap(settings.limit, settings.reserve, memory.context())
    if capped:
        memory.cap(cap.bytes)
    config = strategy_config(settings, strategy)
    window = settings.micro_batch * settings.accumulation
    with tempfile.TemporaryDirectory() as folder:
        run = synthetic_run(Path(folder) / "run", config, settings.windows * window)
        started = time.perf_counter()
        result = train(
            run,
            config,
            lr=1e-4,
            epochs=2,
            output=RunDir(Path(folder) / "out"),
            progress=False,
            save_checkpoints=False,
            save_resume_state=False,
        )
        seconds = time.perf_counter() - started
        warm_up, timed = read_metrics(result.output.metrics_log)
    allocated, reserved = memory.peaks()
    return {
        "strategy": strategy,
        "capped": capped,
        "cap_bytes": cap.bytes if capped else None,
        "plan_budget_bytes": cap.plan_budget,
        "context_bytes": cap.context,
        "context_after_bytes": memory.context(),
        "max_memory_allocated": allocated,
        "max_memory_reserved": reserved,
        "samples_per_second": timed["samples_per_second"],
        "warm_up_samples_per_second": warm_up["samples_per_second"],
        "timed_samples": settings.windows * window,
        "out_of_memory_retries": list(result.out_of_memory_events),
        "train_seconds": seconds,
    }


def within_cap(result: dict[str, Any], limit: int) -> bool:
    """Reserved bytes at most the cap, reserved plus the context at the end at most the limit (what a card of
    `limit` bytes holds), and no out-of-memory retry by the trainer."""
    context = result.get("context_after_bytes") or 0
    return (
        result["max_memory_reserved"] <= result["cap_bytes"]
        and result["max_memory_reserved"] + context <= limit
        and not result["out_of_memory_retries"]
    )


def strategy_row(
    strategy: str, capped: bool, plan_device: int, plan_host: int, outcome: dict[str, Any], limit: int
) -> dict[str, Any]:
    """One strategy's line. `within_limit`: see `within_cap`; False too when the process died of an
    out-of-memory error (placing the model, say); None for an uncapped run, or a failure of another kind
    (reported under "failed")."""
    row: dict[str, Any] = {
        "strategy": strategy,
        "capped": capped,
        "plan_device_bytes": plan_device,
        "plan_host_bytes": plan_host,
        "ok": outcome["ok"],
        "seconds": outcome["seconds"],
    }
    if "result" not in outcome:
        died_of_memory = "out of memory" in outcome.get("error", "").lower()
        return {**row, "within_limit": False if capped and died_of_memory else None, "error": outcome.get("error")}
    result = outcome["result"]
    return {**row, **result, "within_limit": within_cap(result, limit) if capped else None}


def measured_bytes(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Per strategy, the bytes reserved by a run that trained at the planned micro-batch (no out-of-memory
    retry, which would have measured a smaller one); a capped run wins over an uncapped one."""
    out: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: not r["capped"]):
        if "max_memory_reserved" in row and not row["out_of_memory_retries"] and row["strategy"] not in out:
            out[row["strategy"]] = row["max_memory_reserved"]
    return out


# ---- part 3: the small pipeline, part 4: nccl ------------------------------------------------------------------


def small_pipeline(settings: Settings, folder: Path, seconds: float) -> dict[str, Any]:
    data = folder / "records.jsonl"
    write_jsonl(data, bundled_records(settings.small_records, clean=False))
    small = "tiny" if settings.dry_run else "small"
    run = folder / "small_run"
    command = [
        sys.executable,
        "-m",
        "redheart",
        "pipeline",
        "--run",
        str(run),
        "--preset",
        small,
        "--data",
        str(data),
        "--cache",
        str(folder / "cache"),
    ]
    for setting in (
        f"train.device={settings.device}",
        "train.epochs=1",
        "train.checkpoint_every=1",
        "sweep.lrs=[1e-4]",
        "sweep.epochs=1",
        "sweep.reseed_top=0",
    ):
        command += ["--set", setting]
    outcome = run_part(command, seconds)
    if outcome["ok"]:
        from redheart.train.telemetry.records import read_metrics

        epoch = read_metrics(RunDir(run).metrics_log)[-1]
        outcome.update(
            samples_per_second=epoch["samples_per_second"],
            peak_memory_bytes=epoch["peak_memory_bytes"],
            report=(RunDir(run).report / "report.md").exists(),
        )
        outcome["ok"] = outcome["report"]
    return {"preset": small, "records": settings.small_records, **outcome}


def nccl_child(settings: Settings) -> dict[str, Any]:
    """Under torchrun: the process group of the trainer's backend, and the collectives the trainer uses."""
    import torch.distributed as dist

    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    device = torch.device("cpu") if settings.dry_run else torch.device("cuda", local)
    backend = "gloo" if settings.dry_run else "nccl"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world, device_id=device if device.type == "cuda" else None)
    try:
        value = torch.tensor([rank + 1.0], device=device)
        dist.all_reduce(value)
        dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()
        names: list[Any] = [None] * world
        dist.all_gather_object(names, f"rank{rank}")
    finally:
        dist.destroy_process_group()
    expected = world * (world + 1) / 2
    return {
        "backend": backend,
        "world_size": world,
        "all_reduce": float(value.item()),
        "expected": expected,
        "gathered": names,
        "ok": float(value.item()) == expected and names == [f"rank{r}" for r in range(world)],
    }


def run_part(command: list[str], seconds: float) -> dict[str, Any]:
    """Run one part's process; its last stdout line, when JSON, is its result."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(1.0, seconds), env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {seconds:.0f} s", "seconds": time.perf_counter() - started}
    outcome: dict[str, Any] = {
        "ok": done.returncode == 0,
        "returncode": done.returncode,
        "seconds": time.perf_counter() - started,
    }
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines and lines[-1].startswith("{"):
        outcome["result"] = json.loads(lines[-1])
    if done.returncode != 0:
        outcome["error"] = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
    return outcome


# ---- part 2: the CUDA suite ----------------------------------------------------------------------------------


def cuda_suite(settings: Settings, seconds: float) -> dict[str, Any]:
    """`pytest -m cuda` (skipped on a machine without CUDA, as in the dry run); counts from its JUnit file."""
    junit = settings.out / "cuda_suite.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    outcome = run_part(command + ["tests"], seconds)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    tests: list[dict[str, Any]] = []
    if junit.exists():
        for case in ElementTree.parse(junit).getroot().iter("testcase"):
            state = next((kind for kind in ("failure", "error", "skipped") if case.find(kind) is not None), "passed")
            state = {"failure": "failed", "error": "failed"}.get(state, state)
            counts[state] += 1
            tests.append({"name": case.get("name"), "state": state, "seconds": float(case.get("time", 0))})
    # pytest exits 5 when it selects nothing; a suite that ran and failed nothing is ok.
    ok = outcome.get("returncode") in (0, 5) and counts["failed"] == 0
    return {**{k: v for k, v in outcome.items() if k != "result"}, **counts, "tests": tests, "ok": ok}


# ---- the parent --------------------------------------------------------------------------------------------------


def check(settings: Settings) -> int:
    started = time.perf_counter()
    timings: dict[str, float] = {}

    slack = DRY_RUN_SLACK if settings.dry_run else 1

    def left(share: float) -> float:
        return min(share * slack, WALL_SECONDS * slack - (time.perf_counter() - STARTED))

    memory = memory_of(settings)
    card = memory.total()
    plan = plan_for_config(strategy_config(settings, "auto"), settings.limit, settings.reserve)
    cap = Cap(settings.limit, settings.reserve)
    timings["startup and plan"] = time.perf_counter() - STARTED
    me = [sys.executable, str(Path(__file__).resolve())]
    report: dict[str, Any] = {
        "device": "cpu (dry run)" if settings.dry_run else torch.cuda.get_device_name(0),
        "card_bytes": card,
        "preset": settings.preset,
        "limit_bytes": settings.limit,
        "reserve_bytes": settings.reserve,
        "plan_budget_bytes": cap.plan_budget,
        "micro_batch": settings.micro_batch,
        "accumulation": settings.accumulation,
        "timed_optimizer_steps": settings.windows,
        "plan_choice": plan.chosen,
        "torch": torch.__version__,
        "wall_limit_seconds": WALL_SECONDS * (DRY_RUN_SLACK if settings.dry_run else 1),
    }
    settings.out.mkdir(parents=True, exist_ok=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    if "nccl" in settings.parts:
        nccl = run_part(
            torchrun + [str(Path(__file__).resolve()), "--child-nccl", *settings.child_args()], left(SHARES["nccl"])
        )
        report["nccl"] = {**nccl, "ok": nccl["ok"] and nccl.get("result", {}).get("ok", False)}
        timings["nccl"] = nccl["seconds"]
    rows = []
    chosen = [(name, capped) for name, capped in chosen_strategies(plan, card) if name in (settings.only or (name,))]
    for strategy, capped in chosen if "strategies" in settings.parts else []:
        footprint = plan.footprint(strategy)
        command = me + ["--child", strategy, *(["--capped"] if capped else []), *settings.child_args()]
        outcome = run_part(command, left(SHARES["strategy"]))
        row = strategy_row(strategy, capped, footprint.device_total, footprint.host_total, outcome, settings.limit)
        rows.append(row)
        timings[f"strategy {strategy}{'' if capped else ' (uncapped)'}"] = outcome["seconds"]
    report["strategies"] = rows
    measured = measured_bytes(rows)
    if measured:
        write_correction(settings.out / "memory_correction.json", plan, report["device"], measured)
        report["correction_file"] = str(settings.out / "memory_correction.json")
    if "suite" in settings.parts:
        report["suite"] = cuda_suite(settings, left(SHARES["suite"]))
        timings["suite"] = report["suite"]["seconds"]
    if "small" in settings.parts:
        with tempfile.TemporaryDirectory() as folder:
            report["small"] = small_pipeline(settings, Path(folder), left(SHARES["small"]))
        timings["small"] = report["small"]["seconds"]
    wall = time.perf_counter() - STARTED
    timings["other (report, clean-up)"] = wall - sum(timings.values())
    report["timings"], report["wall_seconds"] = timings, wall
    report["check_seconds"] = time.perf_counter() - started
    over = [r["strategy"] for r in rows if r["within_limit"] is False]
    failed = [r["strategy"] for r in rows if not r["ok"] and r["within_limit"] is None] + [
        p for p in ("nccl", "suite", "small") if not report.get(p, {"ok": True})["ok"]
    ]
    report["over_limit"], report["failed"] = over, failed
    write_json(settings.out / "gpu_check.json", report)
    table = markdown(report)
    with atomic_open(settings.out / "gpu_check.md") as handle:
        handle.write(table)
    print(table)
    return 1 if over else 2 if failed else 0


def _gib(value: int | None) -> str:
    return "—" if value is None else f"{value / GiB:.2f}"


def markdown(report: dict[str, Any]) -> str:
    limit, reserve = report["limit_bytes"], report["reserve_bytes"]
    context = next((r["context_bytes"] for r in report["strategies"] if r.get("context_bytes") is not None), None)
    lines = [
        f"# GPU check: {report['device']}, preset {report['preset']}, micro-batch {report['micro_batch']} x "
        f"accumulation {report['accumulation']}",
        "",
        f"Plan for a {limit / GiB:.2f} GiB card: {report['plan_choice'] or 'nothing fits'}. "
        f"Timed: {report['timed_optimizer_steps']} optimizer steps after as many warm-up steps.",
        "",
        f"Cap: {Cap(limit, reserve, context).describe()}."
        + (" Each capped process measured the context itself (column context)." if context is not None else ""),
        "",
        "| strategy | cap (GiB) | context (GiB) | plan on device (GiB) | max allocated (GiB) | max reserved (GiB) "
        "| reserved / plan | samples/s | within cap |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["strategies"]:
        within = {True: "yes", False: "**no**", None: "—"}[row.get("within_limit")]
        speed = (
            f"{row['samples_per_second']:.2f}"
            if "samples_per_second" in row
            else f"failed: {(row.get('error') or '')[-60:]}"
        )
        reserved = row.get("max_memory_reserved")
        ratio = "—" if reserved is None else f"{reserved / row['plan_device_bytes']:.2f}"
        cap = _gib(row.get("cap_bytes")) if row["capped"] else "none"
        lines.append(
            f"| {row['strategy']} | {cap} | {_gib(row.get('context_bytes'))} | {_gib(row['plan_device_bytes'])} | "
            f"{_gib(row.get('max_memory_allocated'))} | {_gib(reserved)} | {ratio} | {speed} | {within} |"
        )
    lines.append("")
    if "correction_file" in report:
        lines.append(
            f"Measured bytes per strategy: {report['correction_file']} "
            f"(`redheart memory --preset {report['preset']} --set train.micro_batch={report['micro_batch']} "
            f"--correction {report['correction_file']}`)."
        )
    if "suite" in report:
        suite = report["suite"]
        lines.append(
            f"CUDA suite (`pytest -m cuda`): {'ok' if suite['ok'] else 'FAILED'}, {suite['passed']} passed, "
            f"{suite['failed']} failed, {suite['skipped']} skipped in {suite['seconds']:.0f} s"
        )
        lines += [f"- failed: {t['name']}" for t in suite["tests"] if t["state"] == "failed"]
    if "small" in report:
        small = report["small"]
        lines.append(
            f"Small pipeline ({small['preset']}, {small['records']} records, one epoch, end to end): "
            f"{'ok' if small['ok'] else 'FAILED'} in {small['seconds']:.0f} s"
            + (f", {small['samples_per_second']:.1f} samples/s" if "samples_per_second" in small else "")
        )
    if "nccl" in report:
        nccl = report["nccl"]
        lines.append(
            f"torchrun, one process, {nccl.get('result', {}).get('backend', '?')}: {'ok' if nccl['ok'] else 'FAILED'}"
        )
    lines += [
        "",
        f"Wall time: {report['wall_seconds']:.0f} s of at most {report['wall_limit_seconds']} s: "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in report["timings"].items())
        + ".",
        "",
    ]
    if report["over_limit"]:
        lines.append(f"Over the cap although the plan says they fit: {', '.join(report['over_limit'])}.")
    if report["failed"]:
        lines.append(f"Failed: {', '.join(report['failed'])}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="the same path on CPU: tiny preset, no CUDA call")
    parser.add_argument("--limit", default="8GiB", help="the card size to simulate (default 8GiB)")
    parser.add_argument("--reserve", default=str(DEFAULT_RESERVE), help="the plan's reserve for the CUDA context")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run (default: all)")
    parser.add_argument("--strategies", nargs="+", default=[], help="only these of the strategies the plan chooses")
    parser.add_argument("--windows", type=int, default=2, help="timed optimizer steps, after as many warm-up steps")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=16)
    parser.add_argument("--small-records", type=int, default=600, help="records of the small pipeline")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--capped", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-nccl", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = Settings(
        args.out,
        args.dry_run,
        parse_bytes(args.limit),
        parse_bytes(args.reserve),
        tuple(args.parts),
        tuple(args.strategies),
        args.windows,
        args.micro_batch,
        args.accumulation,
        args.small_records,
    )
    if args.child or args.child_nccl:
        result = nccl_child(settings) if args.child_nccl else strategy_child(settings, args.child, args.capped)
        print(json.dumps(result))
        return 0
    if not settings.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; run with --dry-run to check the path on CPU", file=sys.stderr)
        return 2
    return check(settings)


if __name__ == "__main__":
    raise SystemExit(main())
