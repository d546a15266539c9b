"""bf16 checkpoints (train.checkpoint_dtype) against fp32 ones of the same weights: what selection measures and
chooses.

One tiny run is trained with fp32 checkpoints. Two copies get the same weights rounded to bf16: one re-saved in
bf16 by save_checkpoint (what train.checkpoint_dtype=bfloat16 writes), one holding the rounded values in fp32
files, rounded here by the test (w.to(bfloat16).to(float32)). Selection reads bf16 files into the fp32 model, so
the bf16 copy must measure and choose exactly what the rounded copy does; against the fp32 run, only the choices
that compare no validation scores are fixed (see the last test for why the others are not).
"""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from redheart.config import RunConfig
from redheart.core.atomic import read_json
from redheart.core.rundir import RunDir
from redheart.model.model import RedHeartModel
from redheart.select.crossover import CROSSOVER, ENSEMBLE, crossover, variant_name
from redheart.train.recipe import train
from redheart.train.state.checkpoints import load_checkpoint, save_checkpoint

from tiny_run import make_run, tiny_config

EPOCHS = 6


def resave(run: RunDir, config: RunConfig, dtype: str, round_to_bf16: bool = False) -> None:
    """Every checkpoint of `run` written again as `dtype` files, its fp32 weights first rounded to bf16 if asked."""
    for folder in [*sorted(run.checkpoints.glob("epoch_*")), run.checkpoints / "ema"]:
        model = RedHeartModel(config.model, input_dim=config.encoder.dim, max_segments=config.encoder.max_segments)
        load_checkpoint(model, folder)
        if round_to_bf16:
            with torch.no_grad():
                for tensor in model.state_dict().values():
                    if tensor.dtype == torch.float32:
                        tensor.copy_(tensor.to(torch.bfloat16).to(torch.float32))
        extra = (
            {"module_stats.json": read_json(folder / "module_stats.json")}
            if (folder / "module_stats.json").exists()
            else {}
        )
        save_checkpoint(model, folder, read_json(folder / "metrics.json"), config.preset, extra, dtype=dtype)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dtype")
    fp32 = make_run(root / "fp32", n=40)
    config = tiny_config(**{"train.epochs": EPOCHS, "train.rdrop_alpha": 0.0, "select.refine_rounds": 1})
    train(fp32, config, lr=3e-3, progress=False)
    bf16, rounded = RunDir(root / "bf16"), RunDir(root / "rounded")
    shutil.copytree(fp32.root, bf16.root)
    shutil.copytree(fp32.root, rounded.root)
    resave(bf16, config, "bfloat16")
    resave(rounded, config, "float32", round_to_bf16=True)
    return {name: (run, crossover(run, config)) for name, run in (("fp32", fp32), ("bf16", bf16), ("rounded", rounded))}


def test_the_copy_holds_bf16_weights(runs):
    (fp32, _), (bf16, _) = runs["fp32"], runs["bf16"]
    halves = load_file(str(bf16.checkpoint(2) / "group_a.safetensors"))
    fulls = load_file(str(fp32.checkpoint(2) / "group_a.safetensors"))
    assert {t.dtype for t in halves.values()} == {torch.bfloat16}
    assert all(torch.equal(halves[k], fulls[k].to(torch.bfloat16)) for k in fulls)


def test_selection_on_bf16_checkpoints_is_selection_on_the_rounded_weights(runs):
    # Loading a bf16 tensor into an fp32 parameter is exact (every bf16 value is an fp32 value), so both copies put
    # bit-identical weights through the same deterministic computation (forwards, LBFGS fusion re-fits, soups
    # averaged in float64) in one process: every score is equal, not close, on any machine, and so is every choice.
    on_bf16, on_rounded = runs["bf16"][1], runs["rounded"][1]
    assert on_bf16.sweet_spots == on_rounded.sweet_spots and on_bf16.refined == on_rounded.refined
    assert [c.to_json() for c in on_bf16.candidates] == [c.to_json() for c in on_rounded.candidates]
    assert on_bf16.best == on_rounded.best and on_bf16.final_model == on_rounded.final_model


def test_bf16_checkpoints_keep_the_choices_that_compare_no_scores(runs):
    on_fp32, on_bf16 = runs["fp32"][1], runs["bf16"][1]
    # Sweet spots are read from the training metrics, which the copy keeps; the crossover, its shifted variants,
    # their ensemble, the last checkpoint, the EMA weights and the last-k average follow from them and the saved
    # epochs alone.
    assert on_bf16.sweet_spots == on_fp32.sweet_spots
    recipe = lambda c: (c.name, c.kind, c.epochs, c.folder, c.average, c.members)  # noqa: E731
    fixed = {CROSSOVER, ENSEMBLE, *(variant_name(s) for s in (-4, -2, 2, 4)), "EMA weights"}
    fixed |= {f"last checkpoint (epoch {EPOCHS})", "average of the last 5 checkpoints"}
    chosen = lambda result: sorted(recipe(c) for c in result.candidates if c.name in fixed)  # noqa: E731
    assert len(chosen(on_fp32)) == len(fixed)
    assert chosen(on_bf16) == chosen(on_fp32)
    # Not asserted: the choices made by comparing validation scores (best checkpoint, greedy soup, refinement, best
    # and final candidate). No float-format bound holds for those scores: each is the loss after a fusion re-fit of
    # 50 LBFGS iterations that has not converged, and a different start takes a different path. Measured once (AMD
    # EPYC): rounding the EMA weights to bf16 moved the loss at a fixed fusion by 0.02 %, the re-fitted loss by
    # 1.55 %; and the final model's two front-runners were 0.06 % apart. So on another machine (whose training
    # gives other weights) those choices may legitimately differ; the test above pins what bf16 files change:
    # nothing but the rounding.
