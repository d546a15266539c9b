"""SIGINT / SIGTERM on a real training subprocess: finish the micro-step, save, print the command, exit 130/143."""

from __future__ import annotations

import shutil
import signal

import pytest
from test_resume_kill import EPOCHS, LR, assert_identical, live_state, start_driver, wait_for

from redheart.core.rundir import RunDir
from redheart.train.recipe import train
from redheart.train.state.resume import read_resume_info

from tiny_run import tiny_config


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    train(data, tiny_config(), lr=LR, epochs=EPOCHS, output=RunDir(out), progress=False)
    return live_state(out)


def own_copy(data, tmp_path):
    """The run folder itself is the output here, so `redheart train --run <it>` is the resume command."""
    shutil.copytree(data.root, tmp_path / "run")
    return tmp_path / "run"


# SIGINT and SIGTERM take the same save path; the default run keeps SIGTERM (and the second Ctrl+C test), SIGINT's
# exit code is checked with -m slow.
@pytest.mark.parametrize(
    "signum, code", [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)]
)
def test_signal_saves_prints_the_command_and_exits_with_the_conventional_code(data, reference, tmp_path, signum, code):
    run = own_copy(data, tmp_path)
    process = start_driver(run, None, every=0, step_sleep=0.3)
    wait_for(process, "step", count=2)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "finished" not in out
    assert f"to resume, run: redheart train --run {run}" in err
    info = read_resume_info(run / "resume")
    assert info["epoch"] == 0 and info["sample"] in (16, 24)  # after micro-step 2 (or 3, if it had begun)
    train(data.__class__(run), tiny_config(), lr=LR, epochs=EPOCHS, progress=False)
    assert_identical(reference, live_state(run))


def test_second_ctrl_c_while_saving_does_not_corrupt_the_state(data, reference, tmp_path):
    run = own_copy(data, tmp_path)
    # Every state-file write sleeps 0.5 s, so the second and third Ctrl+C land inside the save.
    process = start_driver(run, None, every=0, step_sleep=0.3, write_sleep=0.5)
    wait_for(process, "step")
    process.send_signal(signal.SIGINT)
    wait_for(process, "writing")
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "already stopping" in err
    train(data.__class__(run), tiny_config(), lr=LR, epochs=EPOCHS, progress=False)
    assert_identical(reference, live_state(run))
