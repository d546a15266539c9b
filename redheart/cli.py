"""The `redheart` command: parses arguments and calls one phase. No logic lives here.

Each command imports its phase inside its function, the one place in the package that does: the phases
pull in torch, scikit-learn, matplotlib and transformers, whose import costs seconds that `redheart --help`
or a light command (prepare, model) should not pay.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from redheart.config import RunConfig, load_config, preset, save_config, with_overrides
from redheart.core.phases import PHASES
from redheart.core.rundir import RunDir

# The final model of the main job, where the README tells `pipeline` to put it.
DEFAULT_MODEL = str(RunDir("runs/main").final_model)
REREAD_HELP = "read the test split again although it was read before (recorded in test_results.json's reads)"


def _run_config(run: RunDir, args: argparse.Namespace) -> RunConfig:
    """The run's config: the saved one if the run has it, else the preset; then --config/--set overrides.

    The result is saved back, so the run folder always records the settings its phases ran with.
    """
    if run.config.exists():
        config = load_config(run.config)
        if args.preset and args.preset != config.preset:
            raise SystemExit(
                f"error: {run.root} was set up with preset {config.preset!r}; use a new --run for {args.preset!r}"
            )
    else:
        config = preset(args.preset or "small")
    if args.config:
        config = with_overrides(config, _flatten(load_config_file(Path(args.config))))
    if args.set:
        config = with_overrides(config, args.set)
    save_config(config, run.config)
    return config


def load_config_file(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat: dict = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "budgets":
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _data_path(given: str | list[str] | None) -> Path | list[Path]:
    """The labelled input file(s): those given (several with --data A --data B), else the bundled set."""
    from redheart.data.schema import bundled_data_path

    if isinstance(given, list):
        return [Path(p) for p in given] if len(given) > 1 else Path(given[0])
    return Path(given) if given else bundled_data_path()


def _extra_paths(given: list[str] | None) -> list[Path]:
    """The train-only input files; "bundled" names the community verdicts shipped in the package."""
    from redheart.data.schema import bundled_verdicts_path

    return [bundled_verdicts_path() if item == "bundled" else Path(item) for item in given or [] if item != "none"]


_EXTRA_HELP = (
    "records for the training split only (e.g. verdicts without the other targets), repeatable; "
    "'bundled' is the 13,362 community verdicts shipped in the package"
)


def _cmd_prepare(args: argparse.Namespace) -> None:
    from redheart.data.prepare import format_summary, prepare

    run = RunDir(args.run)
    config = _run_config(run, args)
    summary = prepare(
        _data_path(args.data), run, config.data, strict=args.strict, extra=_extra_paths(args.extra_verdicts)
    )
    print(format_summary(summary))


def _cmd_encode(args: argparse.Namespace) -> None:
    from redheart.data.encode import encode_run, format_encode_summary

    run = RunDir(args.run)
    config = _run_config(run, args)
    print(format_encode_summary(encode_run(run, config.encoder, cache_dir=args.cache)))


def _cmd_model(args: argparse.Namespace) -> None:
    from redheart.model.table import format_parameter_table

    config = preset(args.preset or "full")
    if args.set:
        config = with_overrides(config, args.set)
    print(format_parameter_table(config))


def _cmd_memory(args: argparse.Namespace) -> None:
    from redheart.train.memory.format import format_memory_plan
    from redheart.train.memory.plan import parse_bytes, plan_for_config, read_correction

    config = preset(args.preset)
    if args.set:
        config = with_overrides(config, args.set)
    correction = read_correction(args.correction) if args.correction else None
    plan = plan_for_config(config, parse_bytes(args.vram), parse_bytes(args.reserve), args.processes, correction)
    print(format_memory_plan(plan))


def _cmd_disk(args: argparse.Namespace) -> None:
    from redheart.train.disk_plan import format_disk_plan, plan_for_run

    run = RunDir(args.run) if args.run else None
    if run is not None and run.config.exists():
        config = load_config(run.config)
    else:
        config = preset(args.preset or "small")
    if args.set:
        config = with_overrides(config, args.set)
    scratch = run or RunDir(Path("runs") / "__disk_plan_without_a_run__")
    plan = plan_for_run(scratch, config, data=Path(args.data) if args.data else None)
    print(format_disk_plan(plan, run))


def _cmd_prune(args: argparse.Namespace) -> None:
    from redheart.select.prune import format_pruned, prune_checkpoints

    print(format_pruned(prune_checkpoints(RunDir(args.run), dry_run=args.dry_run), args.dry_run))


def _cmd_sweep(args: argparse.Namespace) -> None:
    from redheart.train.sweep.run import collect, format_choice, run_sweep, run_trial, trial_count

    run = RunDir(args.run)
    config = _run_config(run, args)
    if args.trial is not None:
        trial = run_trial(run, config, args.trial)
        print(f"trial {trial.index} of {trial_count(config)} done: {trial.folder(run)}")
    else:
        print(format_choice(collect(run, config) if args.collect else run_sweep(run, config)))


def _cmd_study(args: argparse.Namespace) -> None:
    from redheart.study.results import collect, format_study
    from redheart.study.run import run_study

    run = RunDir(args.run)
    config = _run_config(run, args)
    if args.point is not None:
        from redheart.study.points import point_of, run_point

        run_point(run, config, args.point)
        print(f"point {args.point} done: {point_of(run, config, args.point).folder(run)}")
    elif args.lr_trial is not None:
        from redheart.study.points import run_lr_trial

        print(f"learning-rate trial {args.lr_trial} done: {run_lr_trial(run, config, args.lr_trial)}")
    elif args.check:
        from redheart.study.run import run_check

        print(f"convergence check done (twice the step cap): {', '.join(run_check(run, config))}")
    else:
        print(format_study(collect(run, config) if args.collect else run_study(run, config)))


def _cmd_train(args: argparse.Namespace) -> None:
    from redheart.train.parallel.distributed import join_job
    from redheart.train.recipe import train

    run = RunDir(args.run)
    config = _run_config(run, args)
    with join_job(config.train.device) as distributed:  # one process unless started by torchrun
        train(run, config, lr=args.lr, distributed=distributed)


def _cmd_analyze(args: argparse.Namespace) -> None:
    from redheart.select.sweet_spots import analyze, format_analysis

    run = RunDir(args.run)
    print(format_analysis(analyze(run, _run_config(run, args))))


def _cmd_crossover(args: argparse.Namespace) -> None:
    from redheart.select.crossover import crossover, format_crossover

    run = RunDir(args.run)
    print(format_crossover(crossover(run, _run_config(run, args))))


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from redheart.evaluate.calibration import fit_calibrators
    from redheart.evaluate.decision_rule import fit_decision_rules, format_rules

    run = RunDir(args.run)
    config = _run_config(run, args)
    fit_calibrators(run, config)
    print(f"calibrators fitted on validation: {run.calibrators}")
    print(format_rules(fit_decision_rules(run, config)))


def _cmd_report(args: argparse.Namespace) -> None:
    from redheart.report.build import build_report

    print(build_report(RunDir(args.run)))


def _cmd_predict(args: argparse.Namespace) -> None:
    from redheart.infer import run_predict

    source = None if args.text is not None else (args.input or "-")
    run_predict(
        args.model,
        source,
        args.text,
        output=args.output,
        calibrated=not args.uncalibrated,
        batch_size=args.batch_size,
        cache_dir=args.cache,
        on_error=args.on_error,
        progress=source not in (None, "-") and sys.stderr.isatty(),
    )


def _cmd_serve(args: argparse.Namespace) -> None:
    from redheart.serve import Batching, Limits, run_server

    run_server(
        args.model,
        host=args.host,
        port=args.port,
        calibrated=not args.uncalibrated,
        cache_dir=args.cache,
        limits=Limits(args.max_texts, args.max_chars, args.max_body_bytes),
        batching=Batching(args.max_batch, args.max_wait_ms),
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from redheart.evaluate.final import evaluate_test, format_results

    run = RunDir(args.run)
    config = _run_config(run, args)
    print(format_results(evaluate_test(run, config, reread=args.reread_test)))


def _cmd_pipeline(args: argparse.Namespace) -> None:
    from redheart.pipeline import run_pipeline

    run = RunDir(args.run)
    config = _run_config(run, args)
    run_pipeline(
        run,
        config,
        data=_data_path(args.data),
        cache_dir=args.cache,
        extra=_extra_paths(args.extra_verdicts),
        reread_test=args.reread_test,
    )


def _add_run_options(parser: argparse.ArgumentParser, default_run: str | None = None) -> None:
    parser.add_argument("--run", required=default_run is None, default=default_run, help="run folder, e.g. runs/NAME")
    parser.add_argument("--preset", help="tiny | small | medium | large | full (default: the run's, else small)")
    parser.add_argument("--config", help="YAML file of overrides, same shape as the run's config.yaml")
    parser.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override one setting")


def _prepare_options(parser: argparse.ArgumentParser) -> None:
    _add_run_options(parser)
    parser.add_argument(
        "--data", action="append", help="JSON array or JSON Lines file, repeatable (default: the bundled Red Heart set)"
    )
    parser.add_argument("--extra-verdicts", action="append", metavar="FILE", help=_EXTRA_HELP)
    parser.add_argument(
        "--strict", action="store_true", help="fail on the first invalid record instead of rejecting it"
    )


def _encode_options(parser: argparse.ArgumentParser) -> None:
    _add_run_options(parser)
    parser.add_argument(
        "--cache", type=Path, help="embedding cache folder (default: $REDHEART_CACHE or ~/.cache/redheart)"
    )


def _sweep_options(parser: argparse.ArgumentParser) -> None:
    _add_run_options(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--trial", type=int, metavar="K", help="run trial K only (first stage 0..n-1, then the reseeds)")
    mode.add_argument("--collect", action="store_true", help="score the finished trials and choose; trains nothing")


def _train_options(parser: argparse.ArgumentParser) -> None:
    _add_run_options(parser)
    parser.add_argument("--lr", type=float, help="learning rate (default: the sweep's choice, else the config's)")


def _report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True)


def _evaluate_options(parser: argparse.ArgumentParser) -> None:
    _add_run_options(parser)
    parser.add_argument("--reread-test", action="store_true", help=REREAD_HELP)


def _study_options(parser: argparse.ArgumentParser) -> None:
    _add_run_options(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--point", type=int, metavar="K", help="run point K only (sizes in order, fractions within)")
    mode.add_argument("--collect", action="store_true", help="table, plots and sentences of the finished points")
    mode.add_argument(
        "--lr-trial", type=int, metavar="K", help="run trial K of the per-size learning-rate sweeps only (size by size)"
    )
    mode.add_argument(
        "--check", action="store_true", help="convergence check: the study.check points again with twice the step cap"
    )


Handler = Callable[[argparse.Namespace], None]
Options = Callable[[argparse.ArgumentParser], None]


def _phase_commands() -> dict[str, tuple[Handler, Options]]:
    """Per phase of redheart.core.phases: the function its command calls and its options (the declaration gives
    the order and the help line). Built with the parser, so a handler replaced on this module is the one called."""
    return {
        "prepare": (_cmd_prepare, _prepare_options),
        "encode": (_cmd_encode, _encode_options),
        "sweep": (_cmd_sweep, _sweep_options),
        "train": (_cmd_train, _train_options),
        "analyze": (_cmd_analyze, _add_run_options),
        "crossover": (_cmd_crossover, _add_run_options),
        "calibrate": (_cmd_calibrate, _add_run_options),
        "evaluate": (_cmd_evaluate, _evaluate_options),
        "report": (_cmd_report, _report_options),
        "study": (_cmd_study, _study_options),
    }


def _add_tool_commands(commands: argparse._SubParsersAction) -> None:
    """The commands that are not phases: the model and its budgets, and serving the final model."""
    model = commands.add_parser("model", help="print the per-module parameter table (no weights allocated)")
    model.add_argument("--preset", default="full")
    model.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE")
    model.set_defaults(func=_cmd_model)

    memory = commands.add_parser("memory", help="bytes per strategy on a device of --vram, and the strategy chosen")
    memory.add_argument("--preset", default="full")
    memory.add_argument("--vram", default="8GiB", help="device memory, e.g. 8GiB (default), 24GB")
    memory.add_argument("--reserve", default="0.5GiB", help="kept free for the CUDA context and fragmentation")
    memory.add_argument("--processes", type=int, default=1, help="GPUs sharing the model with FSDP (per-process bytes)")
    memory.add_argument(
        "--correction",
        type=Path,
        help="bytes measured on a card (memory_correction.json written by bench/gpu_check.py) replace the plan's",
    )
    memory.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE")
    memory.set_defaults(func=_cmd_memory)

    disk = commands.add_parser("disk", help="bytes a whole pipeline writes, per folder, for a preset or a run")
    disk.add_argument("--run", help="a run folder: its settings, its prepared data, what it still has to write")
    disk.add_argument("--preset", help="tiny | small | full, without --run (default small)")
    disk.add_argument("--data", help="input data, without a prepared run (default: the bundled set)")
    disk.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE")
    disk.set_defaults(func=_cmd_disk)

    prune = commands.add_parser("prune", help="delete the checkpoints no pinned sweet spot or candidate uses")
    prune.add_argument("--run", required=True)
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    prune.set_defaults(func=_cmd_prune)

    predict = commands.add_parser("predict", help="predict for a text, a file of texts (JSON Lines or lines) or stdin")
    predict.add_argument("text", nargs="?", help="one text; omit to read --input or stdin")
    predict.add_argument("--model", default=DEFAULT_MODEL, help="a final model folder")
    predict.add_argument(
        "--input", help="JSON Lines with a 'text' field, or plain lines (plain or .gz); '-' for stdin; read as a stream"
    )
    predict.add_argument("--output", help="write the JSON lines to this file (atomically) instead of stdout")
    predict.add_argument(
        "--on-error",
        choices=("stop", "row"),
        default="stop",
        help="a bad input line: stop naming it (default; a file is checked before anything is written), or "
        "write {line, error} in its place and go on",
    )
    predict.add_argument(
        "--uncalibrated", action="store_true", help="the raw distributions (and the rule fitted on them)"
    )
    predict.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    predict.add_argument("--cache", type=Path, help="embedding cache folder")
    predict.set_defaults(func=_cmd_predict)

    serve = commands.add_parser("serve", help="serve a final model over HTTP (POST /predict, GET /health, /model)")
    serve.add_argument("--model", default=DEFAULT_MODEL, help="a final model folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--uncalibrated", action="store_true", help="serve the raw distributions and their rule")
    serve.add_argument("--cache", type=Path, help="embedding cache folder")
    serve.add_argument("--max-texts", type=int, default=256, help="texts per request (413 above)")
    serve.add_argument("--max-chars", type=int, default=100_000, help="characters per text (413 above)")
    serve.add_argument("--max-body-bytes", type=int, default=4 * 2**20, help="request body bytes (413 above)")
    serve.add_argument("--max-batch", type=int, default=64, help="texts per forward pass, across requests")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="wait for more texts to join a batch")
    serve.set_defaults(func=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    """The phases first, in pipeline order (the study, outside it, last), then `pipeline`, then the tools."""
    parser = argparse.ArgumentParser(prog="redheart", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    handlers = _phase_commands()
    for phase in PHASES:
        func, options = handlers[phase.name]
        command = commands.add_parser(phase.command, help=phase.help)
        options(command)
        command.set_defaults(func=func)

    pipeline = commands.add_parser("pipeline", help="every phase in order on one run folder (the main job)")
    _add_run_options(pipeline, default_run="runs/main")
    pipeline.add_argument("--data", action="append", help="input data, repeatable (default: the bundled Red Heart set)")
    pipeline.add_argument("--extra-verdicts", action="append", metavar="FILE", help=_EXTRA_HELP)
    pipeline.add_argument("--cache", type=Path, help="embedding cache folder")
    pipeline.add_argument("--reread-test", action="store_true", help=REREAD_HELP)
    pipeline.set_defaults(func=_cmd_pipeline)

    _add_tool_commands(commands)
    return parser


# Commands that write a run folder hold its lock while they run (redheart.core.runlock): the phases that say so,
# the pipeline and prune. A sweep trial (--trial K) holds the lock of its own trial only.
LOCKED = (*(phase.command for phase in PHASES if phase.locks), "pipeline", "prune")


def _run_locked(args: argparse.Namespace, argv: list[str]) -> None:
    from redheart.core.runlock import run_lock

    if args.command not in LOCKED:
        return args.func(args)
    run = RunDir(args.run)
    command = " ".join(["redheart", *argv])
    trial = getattr(args, "trial", None)
    lock = run.sweep_trial_lock(trial) if trial is not None else None
    with run_lock(run, command, lock):
        return args.func(args)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)  # before the imports below, so --help answers at once

    from redheart.core.checkpoint_files import CheckpointError, DiskFullError
    from redheart.core.runlock import RunFolderBusy
    from redheart.train.memory.plan import NoStrategyFits
    from redheart.train.oom import OutOfMemory
    from redheart.train.state.resume import ResumeError

    try:
        _run_locked(args, argv)
    except (ValueError, FileNotFoundError) as error:  # bad input or a missing artifact
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except (ResumeError, CheckpointError, DiskFullError, OutOfMemory, NoStrategyFits, RunFolderBusy) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
