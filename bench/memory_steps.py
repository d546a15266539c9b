"""Peak memory and speed of a few full-preset training steps, per memory strategy, through the real recipe.

Each strategy trains in its own process (peak memory is per process) on a small synthetic run folder with
384-wide hashing embeddings, the full model's input size: `--windows` accumulation windows of
micro-batch x accumulation samples, then one validation pass. Printed per strategy: the process's peak
RSS; on CUDA also torch.cuda.max_memory_allocated; the plan's figures beside them; and the training
samples per second of the epoch (validation excluded). Without CUDA the "device" is the host, so the
peak RSS holds what the plan puts on the device and in host memory together. The last line gives the
saving strategy's peak as a ratio of standard's, measured in the same command.

    python bench/memory_steps.py [--strategies saving standard] [--windows 2] [--device cuda]
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # runnable from a checkout; the records come from tests/tiny_run.py

import torch  # noqa: E402

from redheart.config import EncoderConfig, preset, with_overrides  # noqa: E402
from redheart.core.atomic import write_json, write_jsonl  # noqa: E402
from redheart.core.host_memory import peak_host_memory_bytes  # noqa: E402
from redheart.core.rundir import RunDir  # noqa: E402
from redheart.data.encode import encode_run  # noqa: E402
from redheart.train.memory.plan import GiB, parse_bytes, plan_for_config  # noqa: E402
from redheart.train.telemetry.records import peak_memory_bytes, read_metrics  # noqa: E402

from tiny_run import synthetic_record  # noqa: E402


def synthetic_run(root: Path, train_size: int) -> RunDir:
    run = RunDir(root)
    rng = random.Random(0)
    records = [synthetic_record(i, rng) for i in range(train_size + 8)]
    write_jsonl(run.clean_records, records)
    ids = [r["id"] for r in records]
    write_json(
        run.split_manifest, {"train": ids[:train_size], "val": ids[train_size : train_size + 4], "test": ids[-4:]}
    )
    encode_run(run, EncoderConfig(name="hashing", dim=384), cache_dir=root / "cache", progress=False)
    return run


def config_for(strategy: str, args: argparse.Namespace):
    return with_overrides(
        preset("full"),
        {
            # On CPU amp is off (autocast is CUDA-only unless a strategy forces bf16), so the plan printed
            # beside the measurement assumes the precision that actually ran.
            "encoder.name": "hashing",
            "train.device": args.device,
            "train.memory": strategy,
            "train.amp": args.device.startswith("cuda"),
            "train.micro_batch": args.micro_batch,
            "train.accumulation": args.accumulation,
            "train.telemetry": False,
        },
    )


def child(strategy: str, args: argparse.Namespace) -> None:
    from redheart.train.recipe import train

    with tempfile.TemporaryDirectory() as folder:
        run = synthetic_run(Path(folder) / "run", args.windows * args.micro_batch * args.accumulation)
        result = train(
            run,
            config_for(strategy, args),
            lr=1e-4,
            epochs=1,
            output=RunDir(Path(folder) / "out"),
            progress=False,
            save_checkpoints=False,
        )
        speed = read_metrics(result.output.metrics_log)[-1]["samples_per_second"]
    cuda = peak_memory_bytes(torch.device("cuda")) if torch.cuda.is_available() else None
    print(json.dumps({"peak_rss": peak_host_memory_bytes(), "cuda_max_allocated": cuda, "samples_per_second": speed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=["saving", "standard"])
    parser.add_argument("--windows", type=int, default=2, help="optimizer steps")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    peaks = {}
    for strategy in args.strategies:
        command = [
            sys.executable,
            __file__,
            "--child",
            strategy,
            "--windows",
            str(args.windows),
            "--device",
            args.device,
            "--micro-batch",
            str(args.micro_batch),
            "--accumulation",
            str(args.accumulation),
        ]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        plan = plan_for_config(config_for(strategy, args), parse_bytes("1000GiB"), 0).footprint(strategy)
        peaks[strategy] = result["peak_rss"]
        line = (
            f"{strategy:>9}: peak RSS {result['peak_rss'] / GiB:6.2f} GiB (plan: device + host "
            f"{(plan.device_total + plan.host_total) / GiB:5.2f} GiB)"
        )
        if result["cuda_max_allocated"] is not None:
            line += (
                f", max_memory_allocated {result['cuda_max_allocated'] / GiB:5.2f} GiB"
                f" (plan: {plan.device_total / GiB:5.2f})"
            )
        print(
            f"{line}, {result['samples_per_second']:.2f} samples/s over {args.windows} optimizer steps of "
            f"{args.micro_batch}x{args.accumulation} samples"
        )
    if {"saving", "standard"} <= set(peaks):
        print(f"saving / standard peak RSS: {peaks['saving'] / peaks['standard']:.3f}")


if __name__ == "__main__":
    main()
