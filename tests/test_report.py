"""The run report of a tiny run built in code (prepare, sweep, train, crossover, calibration, test evaluation),
and of a partial run; the LaTeX tables hold the run's numbers."""

import random
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from redheart.architecture import VERDICTS
from redheart.config import save_config, with_overrides
from redheart.core.atomic import read_json, write_jsonl
from redheart.core.rundir import RunDir
from redheart.data.encode import encode_run
from redheart.data.prepare import prepare
from redheart.evaluate.calibration import (
    fit_calibrators,
)
from redheart.evaluate.decision_rule import fit_decision_rules
from redheart.evaluate.final import evaluate_test
from redheart.report.build import build_report
from redheart.report.numbers import fmt
from redheart.select.crossover import crossover
from redheart.select.final_model import load_final_model
from redheart.train.recipe import train
from redheart.train.sweep.run import run_sweep

from tiny_run import synthetic_record, tiny_config

SECTIONS = (
    "Data",
    "Model",
    "Learning-rate sweep",
    "Training and sweet spots",
    "Crossover and test results",
    "Calibration",
)


def unique_records(n: int) -> list[dict]:
    """The shared synthetic records, each with a random tail so none is a near-duplicate of another."""
    rng = random.Random(0)
    records = [synthetic_record(i, rng) for i in range(n)]
    for record in records:
        record["text"] += " " + " ".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=7)) for _ in range(8))
    return records


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    run = RunDir(root / "run")
    config = tiny_config(
        **{
            "train.epochs": 4,
            "train.rdrop_alpha": 0.0,
            "train.telemetry": False,
            "select.refine_rounds": 1,
            "select.shifts": (-2, 0, 2),
            "select.bootstrap_samples": 100,
            "sweep.lrs": (1e-3, 3e-3),
            "sweep.epochs": 1,
            "sweep.reseed_top": 0,
        }
    )
    save_config(config, run.config)
    data = root / "data.jsonl"
    write_jsonl(data, unique_records(100))
    prepare(data, run, config.data)
    encode_run(run, config.encoder, cache_dir=root / "cache", progress=False)
    run_sweep(run, config, progress=False)
    train(run, config, progress=False)  # at the sweep's choice, as `redheart train` without --lr
    crossover(run, config)
    # 3 folds: the tiny validation split has 10 rows.
    fit_calibrators(run, with_overrides(config, {"calibration.folds": 3}))
    fit_decision_rules(run, config)
    evaluate_test(run, config)  # writes calibration/test_report.json: the report under test is evaluate's own
    return run


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headings, self.images, self._in_h2 = [], [], False

    def handle_starttag(self, tag, attrs):
        self._in_h2 = tag == "h2"
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def test_report_of_a_full_tiny_run_has_every_section_and_its_images(tiny_run, tmp_path):
    html_path = build_report(tiny_run)
    page = Page()
    page.feed(html_path.read_text())
    assert page.headings == list(SECTIONS)
    assert 'class="missing"' not in html_path.read_text()
    assert len(page.images) >= 4  # sweep curves, analysis curves, one reliability diagram per target
    for src in page.images:
        assert not src.startswith("/") and (html_path.parent / src).is_file()
    # Self-contained: the folder alone, moved elsewhere, still has every image.
    moved = shutil.copytree(tiny_run.report, tmp_path / "moved")
    assert all((moved / src).is_file() for src in page.images)
    markdown = (tiny_run.report / "report.md").read_text()
    assert all(f"## {title}" in markdown for title in SECTIONS) and markdown.count("*Source: `") == len(SECTIONS)
    stats = read_json(tiny_run.data_stats)
    assert f"{fmt(stats['clean_records'])} clean records" in markdown


def structurally_valid(tex: str) -> None:
    depth = 0
    for char in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0, "a closing brace without an opening one"
    assert depth == 0, "unbalanced braces"
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack and stack.pop() == name, f"\\end{{{name}}} does not close the open environment"
    assert not stack
    column = r">\{[^}]*\}p\{[^}]*\}|p\{[^}]*\}|[lrc]"
    spec = re.search(rf"\\begin\{{tabular\}}\{{((?:{column})+)\}}", tex).group(1)
    columns = len(re.findall(column, spec))
    stacked = re.sub(r"\\begin\{tabular\}\[t\].*?\\end\{tabular\}", "cell", tex)  # a value above its interval
    for row in re.findall(r"^(.*)\\\\$", stacked, flags=re.MULTILINE):
        assert len(re.split(r"(?<!\\)&", row)) == columns, row


def test_latex_tables_parse_and_hold_the_runs_numbers(tiny_run, tmp_path):
    build_report(tiny_run)
    folder = tiny_run.report / "tables"
    names = {p.stem for p in folder.glob("*.tex")}
    assert names == {
        "data_statistics",
        "architecture",
        "sweet_spots",
        "training_results",
        "calibration",
        "decision_rule",
        "final_vs_probe",
    }
    tables = {name: (folder / f"{name}.tex").read_text() for name in names}
    for tex in tables.values():
        structurally_valid(tex)
    escape = lambda s: s.replace("_", r"\_")  # noqa: E731
    results = read_json(tiny_run.test_results)
    final = results["models"][results["final_model"]]
    key = "verdict_macro_f1"
    (final_row,) = [line for line in tables["training_results"].splitlines() if "(final model)" in line]
    low, high = final["intervals"][key]
    assert f"{fmt(final['headline'][key])}\\\\ {{\\scriptsize [{fmt(low, 3)}, {fmt(high, 3)}]}}" in final_row
    assert escape(results["final_model"]) + " (final model)" in tables["training_results"]
    stats = read_json(tiny_run.data_stats)
    assert f"test & {fmt(stats['split_sizes']['test'])} & " in tables["data_statistics"]
    parameters = read_json(tiny_run.report / "parameters.json")
    assert f"total &  &  & {fmt(parameters['total'])} & " in tables["architecture"]
    calibration = read_json(tiny_run.calibration / "test_report.json")["targets"]["emotions"]
    assert (
        fmt(calibration["before"]["ece"]) in tables["calibration"]
        and fmt(calibration["before"]["brier"]) in tables["calibration"]
    )
    paired = results["final_vs_probe"]["verdict_cross_entropy"]
    assert (
        f"verdict CE & {fmt(paired['final'])} & {fmt(paired['probe'])} & {fmt(paired['difference'])} & "
        in tables["final_vs_probe"]
    )
    spots = read_json(tiny_run.analysis_results)["sweet_spots"]
    assert all(f"{escape(group)} & {fmt(epoch)} & " in tables["sweet_spots"] for group, epoch in spots.items())


def compile_tables(folder, out):
    """pdflatex on a one-column article that \\inputs every table of `folder`; returns the log."""
    wrapper = "\n".join(
        [
            r"\documentclass{article}",
            r"\usepackage{booktabs,graphicx,array}",
            r"\begin{document}",
            r"Tables as they drop into a paper.",
            *(rf"\input{{{p.resolve()}}}" for p in sorted(folder.glob("*.tex"))),
            r"\end{document}",
        ]
    )
    (out / "tables.tex").write_text(wrapper + "\n")
    command = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "tables.tex"]
    done = subprocess.run(command, cwd=out, capture_output=True, text=True)
    log = (out / "tables.log").read_text(errors="replace")
    assert done.returncode == 0, log[-3000:]
    return log


OVERFULL_PT = 3.0  # what a reader cannot see


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (.ci/run installs it)")
def test_latex_tables_compile_in_an_article_and_fit_its_text_block(tiny_run, tmp_path):
    build_report(tiny_run)
    log = compile_tables(tiny_run.report / "tables", tmp_path)
    assert "! " not in log  # no TeX error
    assert "Float too large" not in log  # every table shorter than a page
    overfull = [float(w) for w in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\)", log)]
    assert all(width <= OVERFULL_PT for width in overfull), overfull
    assert (tmp_path / "tables.pdf").stat().st_size > 0


def test_latex_cells_print_the_same_under_any_font_encoding():
    from redheart.report.latex import cell, escape

    assert escape("NLL 0.93 -> 0.85, p >= 0.5 & 5% <x>") == r"NLL 0.93 $\to$ 0.85, p $\geq$ 0.5 \& 5\% $<$x$>$"
    stacked = r"\begin{tabular}[t]{@{}r@{}}0.5000\\ {\scriptsize [0.4000, 0.6000]}\end{tabular}"
    assert cell("0.5000 [0.4000, 0.6000]") == stacked


def test_a_partial_run_gets_a_report_that_says_what_is_missing(tiny_run, tmp_path):
    partial = RunDir(tmp_path / "partial")
    partial.root.mkdir()
    shutil.copyfile(tiny_run.config, partial.config)
    shutil.copyfile(tiny_run.metrics_log, partial.metrics_log)
    shutil.copytree(tiny_run.data, partial.data)
    html = build_report(partial).read_text()
    page = Page()
    page.feed(html)
    assert page.headings == list(SECTIONS)
    # Each missing input names the command that writes it.
    assert "not available: sweep/results.json not found (made by redheart sweep)" in html
    assert "not available: crossover/candidates.json not found (made by redheart crossover)" in html
    assert "not available: calibration/calibrators.json not found (made by redheart calibrate)" in html
    # Without the sweet-spot analysis, the training curves are drawn from metrics.jsonl.
    assert page.images == ["img/training_curves.png"] and (partial.report / "img" / "training_curves.png").is_file()
    assert {p.stem for p in (partial.report / "tables").glob("*.tex")} == {"data_statistics", "architecture"}


def test_the_model_card_beside_the_final_model_is_written_from_the_runs_files(tiny_run):
    build_report(tiny_run)
    card = (tiny_run.final_model / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n")
    results = read_json(tiny_run.root / "test_results.json")
    final = results["models"][results["final_model"]]
    value, (low, high) = final["headline"]["verdict_macro_f1"], final["intervals"]["verdict_macro_f1"]
    (row,) = [line for line in card.splitlines() if line.startswith("| this model |")]
    assert f"{value:.4f} [{low:.4f}, {high:.4f}]" in row
    probe = results["baselines"]["linear_probe"]["headline"]["emotion_accuracy"]
    assert any(line.startswith("| baseline: linear probe |") and f"{probe:.4f}" in line for line in card.splitlines())
    for name, entry in read_json(tiny_run.calibration / "calibrators.json")["targets"].items():
        assert f"- {name}: {entry['method']}, {entry['reason']}." in card
    stats = read_json(tiny_run.data_stats)
    assert f"{stats['records_read']} records read" in card and "fuzz.ratio >= 80" in card
    assert f'redheart predict "TEXT" --model {tiny_run.final_model}' in card
    assert "The test split was read 1 time(s): read 1 at " in card
    best_mae = min(e["headline"]["regression_mae"] for e in results["baselines"].values())
    assert f"regression MAE {final['headline']['regression_mae']:.4f} vs " in card and f" {best_mae:.4f} (" in card
    load_final_model(tiny_run.final_model)  # the card is not in the manifest: rewriting it breaks no checksum
    # The learning rate training ran at, and where it came from (not the config's unset `lr`).
    chosen = read_json(tiny_run.sweep_choice)["lr"]
    assert f"- learning rate {chosen:g}: chosen by the learning-rate sweep (sweep/choice.json)." in card
    assert "lr None" not in card and read_json(tiny_run.model_files.card_data)["learning_rate"]["value"] == chosen
    # Which verdict label to use, with the rule's weights as the final model's rule file holds them.
    rule = read_json(tiny_run.model_files.decision_rule)["modes"]["calibrated"]
    assert "`verdict.label`: the decision rule's class" in card and "`verdict.distribution`" in card
    assert ", ".join(f"{c} {w:.2f}" for c, w in zip(VERDICTS, rule["weights"])) in card
    scored = final["decision_rule"]["verdict_macro_f1"]
    assert f"-> {scored:.4f} (rule)." in card
