"""Cost of the EMA update per optimizer step: every step (torch's AveragedModel, the old way) against every k
steps with the decay raised to k (redheart/train/ema.py).

    python bench/ema_host.py [--parameters 100e6] [--every 16] [--steps 64]

The model is a stack of square linear layers of about --parameters weights, its EMA in host memory. Off CUDA
the model is on the host too, so this measures the host's share (the lerp of every weight, and the copies);
on a GPU (--device cuda) the model is on the device and the copies cross the bus, the old way tensor by
tensor into pageable memory, the new way in chunks through pinned memory. Printed: seconds per optimizer
step of each, and their ratio to the old way measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]  # runnable from a checkout

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # noqa: E402

from redheart.train.ema import EMA  # noqa: E402


def per_step_seconds(update: object, model: nn.Module, steps: int, device: torch.device) -> float:
    """Seconds per call of `update(model)` over `steps` calls, the weights nudged before each (as a step does)."""
    seconds = 0.0
    for _ in range(steps):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(1e-3)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        update(model)  # type: ignore[operator]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - started
    return seconds / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parameters", type=float, default=100e6)
    parser.add_argument("--every", type=int, default=16)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device, host = torch.device(args.device), torch.device("cpu")
    width = 2048
    layers = max(1, round(args.parameters / (width * width)))
    model = nn.Sequential(*(nn.Linear(width, width) for _ in range(layers)))
    count = sum(p.numel() for p in model.parameters())
    old = AveragedModel(model, device=host, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)
    every_step = EMA(model, 0.999, device=host, every=1)
    every_k = EMA(model, 0.999, device=host, every=args.every)
    model.to(device)
    runs = {
        "every step, AveragedModel (old)": old.update_parameters,
        "every step, EMA": every_step.update_parameters,
        f"every {args.every} steps, EMA (decay^{args.every})": every_k.update_parameters,
    }
    results = {name: per_step_seconds(update, model, args.steps, device) for name, update in runs.items()}
    reference = results["every step, AveragedModel (old)"]
    print(
        f"EMA in host memory of {count / 1e6:.0f}M fp32 parameters, model on {device}, {args.steps} optimizer steps, "
        f"{torch.get_num_threads()} threads"
    )
    for name, seconds in results.items():
        print(f"{name:<40} {seconds * 1e3:9.2f} ms per step   ratio to old {seconds / reference:6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
