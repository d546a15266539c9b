"""Resuming where other CUDA devices are visible than when the state was saved."""

import torch
from test_group_swap import trainer_of

from redheart.train.state.resume import load_resume, save_resume
from redheart.train.trainer import Trainer


def test_a_state_saved_with_two_gpus_resumes_where_one_is_visible(tmp_path, monkeypatch, capsys):
    """No GPU here: torch.cuda's RNG functions are replaced by fakes that behave like the real ones on a machine
    with `visible` devices (an unknown index raises IndexError, as torch.cuda.default_generators[index] does)."""
    visible, restored = 2, {}

    def set_rng_state(state: torch.Tensor, device: int = 0) -> None:
        if not 0 <= device < visible:
            raise IndexError("tuple index out of range")
        restored[device] = state

    saved = [torch.full((8,), 1, dtype=torch.uint8), torch.full((8,), 2, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    save_resume(tmp_path, trainer_of(Trainer), {"sample": 0})

    visible = 1
    load_resume(tmp_path, trainer_of(Trainer), identity={})
    assert list(restored) == [0] and torch.equal(restored[0], saved[0])
    assert "devices [1] are dropped" in capsys.readouterr().err
