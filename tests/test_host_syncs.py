"""A training window reads nothing back from the device but the recurrent analyzer's sequence lengths.

On a GPU every read of a tensor's value on the host (bool(), .item(), .tolist(), float(), torch.equal, a copy
to the host) waits for every kernel queued before it. On the CPU the same calls show where those waits would
be: each is counted with the file and function it came from, over the micro-steps of a window (not its
optimizer step, whose AdamW reads its host-side step counters). What remains: the recurrent analyzer's sequence
lengths, which pack_padded_sequence takes on the host, once per forward; and SplitTensors.verdict_only, which
reads the window's index and the presence flags on the host. Before, the model's mask check (two
reads) and the trainer's verdict-only test (one) read the batch every micro-step.
"""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch

from redheart.model.model import RedHeartModel
from redheart.train.ema import build_ema
from redheart.train.optim import build_optimizer
from redheart.train.precision import choose_precision
from redheart.train.schedule import build_scheduler
from redheart.train.trainer import Trainer

from tiny_run import synthetic_split, tiny_config

READS = ("__bool__", "item", "tolist", "__float__", "__int__", "cpu", "numpy")


@pytest.fixture
def reads(monkeypatch):
    """Counter of host reads by the file of the caller, counting while `reads.on` is set."""
    counter: Counter[str] = Counter()
    counter.on = False  # type: ignore[attr-defined]

    def counted(original):
        def read(*args, **kwargs):
            if counter.on:  # type: ignore[attr-defined]
                frame = traceback.extract_stack(limit=2)[0]
                counter[f"{Path(frame.filename).name} {frame.name}"] += 1
            return original(*args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "equal", counted(torch.equal))
    return counter


def test_a_window_reads_only_the_recurrent_analyzers_lengths_from_the_device(reads):
    config = tiny_config(**{"train.accumulation": 4})  # micro-batch 8, R-Drop on: one forward per micro-step
    torch.manual_seed(0)
    model = RedHeartModel(config.model, input_dim=32, max_segments=4)
    optimizer = build_optimizer(model, 1e-3, config.train)
    scheduler = build_scheduler(optimizer, config.train, per_epoch=1)
    precision = choose_precision(torch.device("cpu"), config.train.amp)
    trainer = Trainer(model, optimizer, scheduler, build_ema(model, 0.9), precision, config.train)
    accumulate = trainer.accumulate

    def counted_window(*args, **kwargs):
        reads.on = True
        try:
            return accumulate(*args, **kwargs)
        finally:
            reads.on = False

    trainer.accumulate = counted_window
    split = synthetic_split(32)
    trainer.run_epoch(split, epoch=0, seed=0)
    assert trainer.micro_steps == 4
    # One forward per micro-step. The analyzer copies the lengths to the host (the one wait on a GPU); torch's
    # packing then reads them and the packed batch sizes, host tensors by design. SplitTensors.verdict_only reads
    # the index and, for a split in host memory, views of its five presence flags (a split on a GPU keeps host
    # copies of those), all on the host.
    assert dict(reads) == {
        "dataset.py verdict_only": 4,
        "dataset.py <dictcomp>": 5 * 4,
        "analyzers.py forward": 4,
        "rnn.py pad_packed_sequence": 4,
        "rnn.py get_expected_hidden_size": 4,
    }
