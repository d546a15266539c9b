"""The run report of a tiny run built in code (prepare, sweep, train, crossover, calibration, test evaluation),
and of a partial run; the LaTeX tables hold the run's numbers."""

import random
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from redheart.config import save_config
from redheart.core.atomic import read_json, write_jsonl
from redheart.core.rundir import RunDir
from redheart.data.dataset import load_split, split_targets
from redheart.data.encode import encode_run
from redheart.data.prepare import prepare
from redheart.evaluate.calibration import (
    CalibrationOptions,
    calibration_report,
    fit_calibrators,
    write_calibration_report,
)
from redheart.evaluate.final import evaluate_test
from redheart.report.build import build_report, fmt, fmt_ci
from redheart.select.final_model import load_final_model
from redheart.train.evaluation import predict
from redheart.train.recipe import train
from redheart.train.sweep.run import run_sweep

from tiny_run import synthetic_record, tiny_config

SECTIONS = ("Data", "Model", "Learning-rate sweep", "Training and sweet spots", "Crossover and test results", "Calibration")


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
    config = tiny_config(**{
        "train.epochs": 4, "train.rdrop_alpha": 0.0, "train.telemetry": False, "select.refine_rounds": 1,
        "select.shifts": (-2, 0, 2), "select.bootstrap_samples": 100, "sweep.lrs": (1e-3, 3e-3), "sweep.epochs": 1, "sweep.reseed_top": 0,
    })
    save_config(config, run.config)
    data = root / "data.jsonl"
    write_jsonl(data, unique_records(100))
    prepare(data, run, config.data)
    encode_run(run, config.encoder, cache_dir=root / "cache", progress=False)
    run_sweep(run, config, progress=False)
    train(run, config, lr=3e-3, progress=False)
    evaluate_test(run, config)
    calibrators = fit_calibrators(run, config, CalibrationOptions(folds=3))
    # What redheart.evaluate.final does inside its one read of the test split:
    model, _ = load_final_model(run.final_model)
    test = load_split(run, "test")
    targets, present = split_targets(test)
    write_calibration_report(run, calibration_report(calibrators, predict(model, test)["fused"], targets, present))
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
    spec = re.search(r"\\begin\{tabular\}\{((?:[lrc]|p\{[^}]*\})+)\}", tex).group(1)
    columns = len(re.findall(r"p\{[^}]*\}|[lrc]", spec))
    for row in re.findall(r"^(.*)\\\\$", tex, flags=re.MULTILINE):
        assert len(re.split(r"(?<!\\)&", row)) == columns, row

def test_latex_tables_parse_and_hold_the_runs_numbers(tiny_run, tmp_path):
    build_report(tiny_run)
    folder = tiny_run.report / "tables"
    names = {p.stem for p in folder.glob("*.tex")}
    assert names == {"data_statistics", "architecture", "sweet_spots", "training_results", "calibration"}
    tables = {name: (folder / f"{name}.tex").read_text() for name in names}
    for tex in tables.values():
        structurally_valid(tex)
    escape = lambda s: s.replace("_", r"\_")  # noqa: E731
    results = read_json(tiny_run.test_results)
    final = results["models"][results["final_model"]]
    key = "verdict_macro_f1"
    assert fmt_ci(final["headline"][key], final["intervals"][key]) in tables["training_results"]
    assert escape(results["final_model"]) + " (final model)" in tables["training_results"]
    stats = read_json(tiny_run.data_stats)
    assert f"test & {fmt(stats['split_sizes']['test'])} & " in tables["data_statistics"]
    parameters = read_json(tiny_run.report / "parameters.json")
    assert f"total &  &  & {fmt(parameters['total'])} & " in tables["architecture"]
    calibration = read_json(tiny_run.calibration / "test_report.json")["targets"]["emotions"]
    assert fmt(calibration["before"]["ece"]) in tables["calibration"] and fmt(calibration["before"]["brier"]) in tables["calibration"]
    spots = read_json(tiny_run.analysis_results)["sweet_spots"]
    assert all(f"{escape(group)} & {fmt(epoch)} & " in tables["sweet_spots"] for group, epoch in spots.items())
    if shutil.which("pdflatex"):
        body = "\n".join(tables.values())
        (tmp_path / "t.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + body + "\\end{document}\n")
        subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path, check=True, capture_output=True)


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
    assert "not available: sweep/results.json not found" in html
    assert "not available: crossover/candidates.json not found" in html
    assert "not available: calibration/calibrators.json not found" in html
    # Without the sweet-spot analysis, the training curves are drawn from metrics.jsonl.
    assert page.images == ["img/training_curves.png"] and (partial.report / "img" / "training_curves.png").is_file()
    assert {p.stem for p in (partial.report / "tables").glob("*.tex")} == {"data_statistics", "architecture"}
