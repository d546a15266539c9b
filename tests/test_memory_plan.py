"""The memory plan: optimizer bytes against the optimizers' real state, measured activations, the choice."""

import pytest
import torch

from redheart.architecture import module_names
from redheart.cli import main
from redheart.config import preset
from redheart.model.model import RedHeartModel
from redheart.train.memory.activations import empty_model, measure_activation_bytes
from redheart.train.memory.plan import (
    GiB,
    footprints,
    fsdp_choice,
    fsdp_footprint,
    optimizer_state_bytes,
    parse_bytes,
    plan_memory,
    read_correction,
    write_correction,
)
from redheart.train.optim import build_optimizer

from tiny_run import tiny_config


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors, each storage once (bitsandbytes shares its quantisation maps)."""
    storages = {}
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                storages[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("kind", ["adamw", "adamw8bit"])
def test_planned_optimizer_bytes_equal_the_real_state_after_a_step(kind):
    config = preset("small")  # tensors above and below bitsandbytes' 4,096-value 8-bit threshold
    model = RedHeartModel(config.model, input_dim=32, max_segments=4)
    optimizer = build_optimizer(model, 1e-3, config.train, kind)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    optimizer.step()
    assert state_bytes(optimizer) == optimizer_state_bytes(list(model.parameters()), kind)


def test_activation_bytes_exclude_weights_and_count_bf16_weight_copies():
    config = preset("small")
    model = empty_model(config, 384, 4)
    fp32 = measure_activation_bytes(model, rows=2, bf16=False)
    bf16 = measure_activation_bytes(model, rows=2, bf16=True)
    matrices = sum(p.numel() for p in model.parameters() if p.ndim >= 2)
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert 0 < fp32.total < weights / 10  # two rows of activations are far smaller than the weights
    assert bf16.total >= 2 * matrices * 0.9  # byte counts: autocast keeps a bf16 copy of (nearly) every weight matrix
    assert fp32.checkpointed < fp32.total and bf16.checkpointed < bf16.total
    assert measure_activation_bytes(model, rows=8, bf16=False).total > 3 * fp32.total  # grows with the rows


def test_measuring_does_not_move_the_random_stream():
    model = empty_model(tiny_config(), 32, 4)
    before = torch.get_rng_state()
    measure_activation_bytes(model, rows=4, bf16=False)
    assert torch.equal(before, torch.get_rng_state())


@pytest.fixture(scope="module")
def full_plan_parts():
    """The full 730M model (uninitialised host memory, about 3 GB) and its measured activations."""
    config = preset("full")
    model = empty_model(config, 384, 4)
    # train.amp is on in the full preset, so every strategy plans with the bf16 measurement.
    activations = {True: measure_activation_bytes(model, rows=8, bf16=True)}
    return model, config, activations


def chosen(prints, budget_gib: float) -> str | None:
    return next((f.strategy.name for f in prints if f.device_total <= budget_gib * GiB), None)


def test_full_preset_needs_the_saving_strategy_on_8_gib(full_plan_parts):
    model, config, activations = full_plan_parts
    prints = {f.strategy.name: f for f in footprints(model, config, activations)}
    weights = sum(p.numel() for p in model.parameters()) * 4
    assert prints["standard"].device["weights"] >= weights and prints["standard"].device["optimizer"] >= 2 * weights
    saving = prints["saving"]
    assert saving.device["ema"] == 0 and saving.host["ema"] >= weights
    # 8-bit moments (byte counts): a quarter of fp32 AdamW's, plus one fp32 scale per 256 values: 0.25 + 1/256.
    assert saving.device["optimizer"] < 0.26 * prints["standard"].device["optimizer"]
    assert saving.device_total < 7.5 * GiB < prints["standard"].device_total
    assert prints["swap"].device_total < saving.device_total and prints["swap"].host_total > 3 * weights
    ordered = list(prints.values())
    assert chosen(ordered, 7.5) == "saving"
    assert chosen(ordered, 16) == "standard"
    assert chosen(ordered, 6.5) == "swap"
    assert chosen(ordered, 3.5) == "swap"  # a 4 GiB card: group_b's weights and gradients, one module's update
    assert chosen(ordered, 2) is None


def test_fsdp_shares_the_full_model_over_processes(full_plan_parts):
    model, config, activations = full_plan_parts
    standard = footprints(model, config, activations)[0]
    two, four = (fsdp_footprint(model, config, activations[True], n, accumulate_unsharded=False) for n in (2, 4))
    assert four.device["optimizer"] == standard.device["optimizer"] // 4
    assert standard.device["weights"] / 4 < four.device["weights"] < standard.device["weights"] / 2
    assert four.device_total < 7.5 * GiB < two.device_total < standard.device_total
    # Syncing once per window holds the window's gradients unsharded (fp32, the whole model) between micro-steps.
    once = fsdp_footprint(model, config, activations[True], 4, accumulate_unsharded=True)
    largest = max(sum(p.numel() * 4 for p in getattr(model, name).parameters()) for name in module_names())
    assert once.device["gradients"] - four.device["gradients"] == standard.device["gradients"] - largest
    # On 8 GiB cards that does not fit, so four processes sync after every micro-step; on 16 GiB cards it does.
    eight = fsdp_choice(model, config, activations[True], 4, int(7.5 * GiB))
    assert eight[1] is False and eight[0].device == four.device
    assert fsdp_choice(model, config, activations[True], 4, int(15.5 * GiB)) == (once, True)


def test_plan_of_the_tiny_preset_chooses_standard():
    config = tiny_config()
    plan = plan_memory(empty_model(config, 32, 4), config, vram=parse_bytes("1GiB"), reserve=parse_bytes("0.5GiB"))
    assert plan.chosen == "standard" and plan.rows == 2 * config.train.micro_batch
    assert plan.parameters == sum(p.numel() for p in empty_model(config, 32, 4).parameters())


def test_memory_command_prints_the_table_and_choice(capsys):
    main(["memory", "--preset", "small", "--vram", "8GiB"])
    out = capsys.readouterr().out
    assert "standard" in out and "saving" in out and "swap" in out
    assert "chosen: standard" in out


@pytest.mark.parametrize(
    "text,size", [("8GiB", 8 * 2**30), ("8 GB", 8 * 10**9), ("7.5G", int(7.5 * 2**30)), ("1024", 1024)]
)
def test_parse_bytes(text, size):
    assert parse_bytes(text) == size


def test_parse_bytes_rejects_nonsense():
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("eight gigs")


def tiny_plan(correction=None):
    config = tiny_config()
    return plan_memory(empty_model(config, 32, 4), config, parse_bytes("1GiB"), parse_bytes("0.5GiB"), 1, correction)


def test_a_measured_correction_replaces_the_plans_bytes_and_is_named(tmp_path, capsys):
    """A card that reserved 0.6 GiB for `standard` (the plan says far less) leaves it out of a 0.5 GiB budget."""
    plan = tiny_plan()
    assert plan.chosen == "standard"
    path = tmp_path / "memory_correction.json"
    write_correction(path, plan, "Some GPU", {"standard": parse_bytes("0.6GiB")})
    corrected = tiny_plan(read_correction(path))
    standard = corrected.footprint("standard")
    assert (
        standard.device_total == parse_bytes("0.6GiB")
        and standard.planned_total == plan.footprint("standard").device_total
    )
    assert corrected.footprint("saving") == plan.footprint("saving")  # not measured: as planned
    assert corrected.chosen == "saving"
    main(["memory", "--preset", "tiny", "--vram", "1GiB", "--correction", str(path)])
    out = capsys.readouterr().out
    assert f"measured correction {path} (Some GPU, preset tiny" in out and "correction" in out.splitlines()[4]
    assert "chosen: saving" in out


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "other"}', "not a memory correction"),
        (
            '{"format": "redheart-memory-correction", "device": "x", "preset": "tiny", "micro_batch": 4, "rows": 8, '
            '"strategies": {"standard": {"measured_bytes": -1, "planned_bytes": 10}}}',
            "strategies.standard.measured_bytes must be a positive integer",
        ),
        (
            '{"format": "redheart-memory-correction", "device": "x", "preset": "tiny", "micro_batch": 4, "rows": 8, '
            '"strategies": {"turbo": {"measured_bytes": 1, "planned_bytes": 10}}}',
            "strategies.turbo: unknown memory strategy",
        ),
        ('{"format": "redheart-memory-correction", "device": "x", "strategies": {}}', "field 'preset' must be a str"),
    ],
)
def test_a_malformed_correction_is_a_clear_error(tmp_path, content, problem):
    path = tmp_path / "memory_correction.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as error:
        read_correction(path)
    assert str(path) in str(error.value)


def test_a_correction_of_another_micro_batch_is_refused(tmp_path, capsys):
    path = tmp_path / "memory_correction.json"
    write_correction(path, tiny_plan(), "Some GPU", {"standard": GiB})
    with pytest.raises(SystemExit) as stop:
        main(
            ["memory", "--preset", "tiny", "--vram", "1GiB", "--correction", str(path), "--set", "train.micro_batch=2"]
        )
    assert stop.value.code == 2
    assert (
        "at micro-batch 8 (16 forward rows); this plan is for preset tiny at micro-batch 2" in capsys.readouterr().err
    )
