"""Bytes FSDP moves per accumulation window, before and after syncing gradients once per window, on gloo (CPU).

    python bench/fsdp_comm.py [--preset small] [--accumulation 16] [--micro-batch 4] [--windows 2]

Two processes (forked, gloo) train `--windows` windows of the preset's model with train.distributed=fsdp,
every torch.distributed collective wrapped to count its calls and bytes: all-gathers (weights, per forward and
backward of every micro-step), reduce-scatters (gradients) and all-reduces (the unsharded scalars' gradients,
the loss tally, flags). Four runs: gradients reduce-scattered after every micro-step (the old way) and once per
window, each with fp32 gathers and with bf16 gathers (FSDP's MixedPrecisionPolicy, as under bf16 autocast on a
GPU). Printed: bytes per window of each kind, and the ratio of every run to the old fp32 one.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # runnable from a checkout; tiny_run builds the data

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from redheart.config import preset, with_overrides  # noqa: E402
from redheart.data.dataset import SplitTensors  # noqa: E402
from redheart.model.model import RedHeartModel  # noqa: E402
from redheart.train.optim import build_optimizer  # noqa: E402
from redheart.train.parallel import data_parallel, fsdp  # noqa: E402
from redheart.train.parallel.distributed import join_job  # noqa: E402
from redheart.train.precision import Precision  # noqa: E402
from redheart.train.schedule import build_scheduler  # noqa: E402

COLLECTIVES = {"all_gather_single": "gather", "reduce_scatter_single": "reduce_scatter", "all_reduce": "all_reduce"}


class CommCounter:
    """Wraps torch.distributed's collectives in this process: calls and bytes per kind, and the micro-step
    (counted by `micro_step`) each reduce-scatter ran in."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.micro_step = 0
        self.reduce_scatter_steps: set[int] = set()
        self.originals: dict[str, Callable[..., Any]] = {}

    def install(self) -> None:
        for name, kind in COLLECTIVES.items():
            original = self.originals[name] = getattr(dist, name)

            def wrapped(*args: Any, _original: Callable[..., Any] = original, _kind: str = kind, **kwargs: Any) -> Any:
                # The larger side of the collective: the gathered output, the scattered input, the reduced tensor.
                first, second = (list(args) + [None, None])[:2]
                if _kind == "reduce_scatter":
                    tensor = kwargs.get("input", second)
                else:
                    tensor = kwargs.get("output_tensor", kwargs.get("tensor", first))
                self.calls[_kind] += 1
                self.bytes[_kind] += tensor.numel() * tensor.element_size()
                if _kind == "reduce_scatter":
                    self.reduce_scatter_steps.add(self.micro_step)
                return _original(*args, **kwargs)

            setattr(dist, name, wrapped)

    def uninstall(self) -> None:
        for name, original in self.originals.items():
            setattr(dist, name, original)


def synthetic_split(size: int, input_dim: int, segments: int) -> SplitTensors:
    from tiny_run import synthetic_split as tiny_split

    split = tiny_split(size)
    generator = torch.Generator().manual_seed(1)
    tensors = dict(split.tensors)
    tensors["x"] = torch.randn(size, segments, input_dim, generator=generator)
    tensors["mask"] = torch.ones(size, segments, dtype=torch.bool)
    return SplitTensors(split.name, split.ids, tensors)


def rank_run(
    rank: int, port: int, out: Path, preset_name: str, micro_batch: int, accumulation: int, windows: int, mode: str
) -> None:
    """One rank of one run; writes its counts to out/rank{rank}.json. `mode`: "<sync> <dtype>", sync being
    "every-micro-step" or "once-per-window", dtype "fp32" or "bf16"."""
    os.environ.update(
        WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    sync, dtype = mode.split()
    if sync == "every-micro-step":  # the old behaviour: no accumulation without communication
        data_parallel.sync_gradients = lambda model, flag: None  # type: ignore[assignment]
    config = with_overrides(
        preset(preset_name),
        {
            "train.device": "cpu",
            "train.micro_batch": micro_batch,
            "train.accumulation": accumulation,
            "train.distributed": "fsdp",
            "model.dropout": 0.0,
            "train.rdrop_alpha": 0.0,
        },
    )
    split = synthetic_split(windows * micro_batch * accumulation, 32, 4)
    counter = CommCounter()
    with join_job("cpu") as distributed:
        torch.manual_seed(0)
        model = RedHeartModel(config.model, input_dim=split.input_dim, max_segments=split.max_segments)
        precision = Precision(torch.device("cpu"), torch.bfloat16 if dtype == "bf16" else None)
        fsdp.shard(model, None, precision, distributed.world_size)
        optimizer = build_optimizer(model, 1e-4, config.train, "adamw")
        scheduler = build_scheduler(optimizer, config.train, windows)
        trainer = data_parallel.DataParallelTrainer(
            model, optimizer, scheduler, None, precision, config.train, distributed=distributed
        )
        step = trainer.micro_step

        def counted(*args: Any, **kwargs: Any) -> Any:
            counter.micro_step += 1
            return step(*args, **kwargs)

        trainer.micro_step = counted  # type: ignore[method-assign]
        counter.install()
        try:
            trainer.run_epoch(split, epoch=0, seed=0)
        finally:
            counter.uninstall()
    result = {
        "calls": dict(counter.calls),
        "bytes": dict(counter.bytes),
        "micro_steps": counter.micro_step,
        "reduce_scatter_steps": sorted(counter.reduce_scatter_steps),
        "windows": windows,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def measure(preset_name: str, micro_batch: int, accumulation: int, windows: int, mode: str) -> list[dict[str, Any]]:
    """Both ranks' counts of one run (two processes forked from this one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        torch.multiprocessing.start_processes(
            rank_run,
            args=(port, out, preset_name, micro_batch, accumulation, windows, mode),
            nprocs=2,
            start_method="fork",
        )
        return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=16)
    parser.add_argument("--windows", type=int, default=2)
    args = parser.parse_args(argv)
    modes = ["every-micro-step fp32", "once-per-window fp32", "every-micro-step bf16", "once-per-window bf16"]
    rows = {}
    for mode in modes:
        ranks = measure(args.preset, args.micro_batch, args.accumulation, args.windows, mode)
        rows[mode] = {kind: ranks[0]["bytes"].get(kind, 0) / args.windows for kind in COLLECTIVES.values()}
        rows[mode]["reduce-scatters per window"] = ranks[0]["calls"].get("reduce_scatter", 0) / args.windows
    reference = sum(rows[modes[0]][kind] for kind in COLLECTIVES.values())
    print(
        f"FSDP on gloo, 2 processes, preset {args.preset}, micro-batch {args.micro_batch} x accumulation "
        f"{args.accumulation} ({args.accumulation // 2} micro-steps per rank per window); bytes per window, rank 0"
    )
    print(
        f"{'run':<24}{'gathers':>14}{'reduce-scatters':>17}{'all-reduces':>13}{'total':>14}{'ratio':>7}  calls/window"
    )
    for mode, row in rows.items():
        total = sum(row[kind] for kind in COLLECTIVES.values())
        print(
            f"{mode:<24}{row['gather']:>14,.0f}{row['reduce_scatter']:>17,.0f}{row['all_reduce']:>13,.0f}"
            f"{total:>14,.0f}{total / reference:>7.3f}  {row['reduce-scatters per window']:.0f} reduce-scatters"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
