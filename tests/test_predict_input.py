"""`redheart predict --input`: read as a stream, rows in input order, a bad line named (or written as an error row),
and an input that cannot be read at all answered by one line naming it, exit status 2 and nothing written."""

from __future__ import annotations

import gzip
import json
import sys
from itertools import count, islice
from pathlib import Path

import pytest
import torch

from redheart.cli import main
from redheart.config import with_overrides
from redheart.evaluate.calibration import fit_calibrators
from redheart.evaluate.decision_rule import fit_decision_rules
from redheart.infer import InputRow, Predictor, predict_rows
from redheart.model.model import RedHeartModel
from redheart.select.final_model import save_final_model

from tiny_run import make_run, tiny_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run"), n=60)
    config = tiny_config()
    torch.manual_seed(0)
    model = RedHeartModel(config.model, input_dim=config.encoder.dim, max_segments=config.encoder.max_segments)
    save_final_model(model, run.final_model, config, config.encoder.dim, config.encoder.max_segments, {})
    fit_calibrators(run, with_overrides(config, {"calibration.folds": 3}))
    fit_decision_rules(run, config)
    return run.final_model


def lines(n: int) -> list[str]:
    return [json.dumps({"id": f"t{i}", "text": f"text number {i} apple"}) for i in range(n)]


def predict_cli(model_dir, tmp_path, capsys, *args: str) -> tuple[int, list[dict], str]:
    """(exit status, JSON rows on stdout, stderr) of `redheart predict`."""
    try:
        main(["predict", "--model", str(model_dir), "--cache", str(tmp_path / "cache"), *args])
        status = 0
    except SystemExit as stopped:
        status = int(stopped.code or 0)
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def test_rows_are_taken_a_batch_at_a_time_and_come_out_in_input_order(model_dir, tmp_path):
    predictor = Predictor(model_dir, cache_dir=tmp_path)
    endless = (InputRow(i, {"id": f"t{i}", "text": f"text {i}"}) for i in count(1))  # a list of it would never end
    results = list(islice(predict_rows(predictor, endless, batch_size=8), 20))
    assert [r["id"] for r in results] == [f"t{i}" for i in range(1, 21)]


def test_a_bad_line_stops_before_anything_is_written_naming_the_line(model_dir, tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([*lines(70), '{"text": "unclosed', *lines(3)]) + "\n")
    out = tmp_path / "out.jsonl"
    status, rows, err = predict_cli(model_dir, tmp_path, capsys, "--input", str(path), "--output", str(out))
    assert status == 2 and rows == [] and not out.exists()
    assert err.strip() == f"error: {path}:71: not valid JSON (Unterminated string starting at, column 10)"
    # Without --output the rows would go to stdout: the file is checked first, so nothing is printed either.
    status, rows, err = predict_cli(model_dir, tmp_path, capsys, "--input", str(path))
    assert status == 2 and rows == [] and f"{path}:71:" in err


def test_on_error_row_writes_an_error_row_in_place_and_goes_on(model_dir, tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_bytes(("\n".join([*lines(70), '{"text": 3}']) + "\n").encode() + b"caf\xe9 au lait\n" + b"last one\n")
    status, rows, _ = predict_cli(model_dir, tmp_path, capsys, "--input", str(path), "--on-error", "row")
    assert status == 0 and len(rows) == 73
    assert [r["id"] for r in rows[:70]] == [f"t{i}" for i in range(70)]
    assert rows[70] == {"line": 71, "error": f"{path}:71: field 'text' must be a string"}
    offset = sum(len(line) + 1 for line in [*lines(70), '{"text": 3}']) + 3
    assert rows[71] == {
        "line": 72,
        "error": f"{path}:72: byte 4 of the line (file offset {offset}) is not valid UTF-8",
    }
    assert rows[72]["verdict"]["label"] and "error" not in rows[72]


def corrupt_inputs(tmp_path) -> dict[str, tuple[object, str]]:
    """Each case: the path given to --input and the message expected for it."""
    body = ("\n".join(lines(400)) + "\n").encode()
    packed = gzip.compress(body)
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(packed[: len(packed) // 2])
    flipped = bytearray(packed)
    flipped[-6] ^= 0xFF  # inside the CRC-32 of the gzip trailer: the data decode, the check fails
    corrupt = tmp_path / "crc.jsonl.gz"
    corrupt.write_bytes(bytes(flipped))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"first line\nsecond line caf\xe9\n")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    return {
        "truncated gzip": (truncated, f"{truncated}: the compressed data is truncated or corrupt after line"),
        "corrupt gzip (CRC)": (corrupt, f"{corrupt}: the compressed data is truncated or corrupt after line 400"),
        "non-UTF-8 byte": (latin1, f"{latin1}:2: byte 16 of the line (file offset 26) is not valid UTF-8"),
        "a folder": (folder, f"{folder}: is a folder, not a file of texts"),
        "missing file": (tmp_path / "absent.txt", f"{tmp_path / 'absent.txt'}: no such file of texts"),
        # A file that opens but cannot be read: on Linux, reading /proc/self/mem at offset 0 fails with EIO.
        "unreadable file": (Path("/proc/self/mem"), "/proc/self/mem: cannot read it (Input/output error)"),
    }


@pytest.mark.parametrize("on_error", ["stop", "row"])
def test_an_unreadable_input_is_one_line_naming_it_exit_2_and_nothing_written(model_dir, tmp_path, capsys, on_error):
    for case, (path, message) in corrupt_inputs(tmp_path).items():
        if case == "non-UTF-8 byte" and on_error == "row":
            continue  # a bad line, not a bad file: written as an error row (the test above)
        if case == "unreadable file" and not sys.platform.startswith("linux"):
            continue
        out = tmp_path / "out.jsonl"
        args = ("--input", str(path), "--output", str(out), "--on-error", on_error)
        status, rows, err = predict_cli(model_dir, tmp_path, capsys, *args)
        assert status == 2 and rows == [] and not out.exists(), case
        assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {message}"), (case, err)


def test_prepare_names_a_truncated_compressed_file(tmp_path, capsys):
    packed = gzip.compress(("[" + ",".join(json.dumps({"text": f"t {i}"}) for i in range(3000)) + "]").encode())
    path = tmp_path / "data.json.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(SystemExit) as stopped:
        main(["prepare", "--run", str(tmp_path / "run"), "--data", str(path)])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"{path}: the compressed data is truncated or corrupt after " in err
    assert "elements of the JSON array (reading stopped at decompressed byte" in err
    assert not (tmp_path / "run" / "data").exists()
