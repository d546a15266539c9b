"""bf16 checkpoints (train.checkpoint_dtype) against fp32 ones of the same weights: what selection chooses.

One tiny run is trained with fp32 checkpoints; a copy of it gets the same checkpoints re-saved in bf16 by
save_checkpoint. The crossover runs on both: sweet spots, greedy soup, last-k average, best single and the final
model must be the same; the validation losses may move by the rounding of the weights, and with them the greedy
refinement's near-tied moves.
"""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from redheart.config import RunConfig
from redheart.core.atomic import read_json
from redheart.core.rundir import RunDir
from redheart.model.model import RedHeartModel
from redheart.select.crossover import REFINED, crossover
from redheart.train.recipe import train
from redheart.train.state.checkpoints import load_checkpoint, save_checkpoint

from tiny_run import make_run, tiny_config

EPOCHS = 6


def resave_in_bf16(run: RunDir, config: RunConfig) -> None:
    for folder in [*sorted(run.checkpoints.glob("epoch_*")), run.checkpoints / "ema"]:
        model = RedHeartModel(config.model, input_dim=config.encoder.dim, max_segments=config.encoder.max_segments)
        load_checkpoint(model, folder)
        extra = (
            {"module_stats.json": read_json(folder / "module_stats.json")}
            if (folder / "module_stats.json").exists()
            else {}
        )
        save_checkpoint(model, folder, read_json(folder / "metrics.json"), config.preset, extra, dtype="bfloat16")


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("dtype")
    fp32 = make_run(root / "fp32", n=40)
    config = tiny_config(**{"train.epochs": EPOCHS, "train.rdrop_alpha": 0.0, "select.refine_rounds": 1})
    train(fp32, config, lr=3e-3, progress=False)
    bf16 = RunDir(root / "bf16")
    shutil.copytree(fp32.root, bf16.root)
    resave_in_bf16(bf16, config)
    return crossover(fp32, config), crossover(bf16, config), fp32, bf16


def test_the_copy_holds_bf16_weights(both):
    _, _, fp32, bf16 = both
    halves = load_file(str(bf16.checkpoint(2) / "group_a.safetensors"))
    fulls = load_file(str(fp32.checkpoint(2) / "group_a.safetensors"))
    assert {t.dtype for t in halves.values()} == {torch.bfloat16}
    assert all(torch.equal(halves[k], fulls[k].to(torch.bfloat16)) for k in fulls)


def test_crossover_and_soups_choose_the_same_on_bf16_checkpoints(both):
    on_fp32, on_bf16, _, _ = both
    assert on_bf16.sweet_spots == on_fp32.sweet_spots
    assert [c.name for c in on_bf16.candidates] == [c.name for c in on_fp32.candidates]  # soup size is in the name
    recipe = lambda c: (c.epochs, c.average, c.folder, c.members)  # noqa: E731
    same = [c for c in on_fp32.candidates if c.name != REFINED]
    assert [recipe(c) for c in on_bf16.candidates if c.name != REFINED] == [recipe(c) for c in same]
    assert on_bf16.best == on_fp32.best and on_bf16.final_model == on_fp32.final_model
    # Measured on this run: every candidate's validation loss moves by at most 0.9 % (the EMA weights; bf16 keeps
    # 8 bits of mantissa), and the greedy refinement, which accepts any improvement however small, may end on
    # other epochs for a group at a validation loss a fraction of a percent away.
    for a, b in zip(on_fp32.candidates, on_bf16.candidates):
        assert b.val["loss"] == pytest.approx(a.val["loss"], rel=0.015), a.name
