"""One process per run folder: a second command on a busy folder stops at once naming the holder, and a holder
killed with SIGKILL leaves no lock behind."""

from __future__ import annotations

import os
import signal

import pytest

from redheart.cli import main
from redheart.core.rundir import RunDir
from redheart.core.runlock import RunFolderBusy, run_lock

from tiny_run import start_driver

# The holder is the real `redheart train` command line, its training replaced by a wait: the lock under test
# is the one the CLI takes around every phase, whatever the phase does.
HOLDER = """
import json, sys, time
import redheart.cli as cli
args = json.loads(sys.argv[1])
def waiting(_args):
    print("holding", flush=True)
    time.sleep(120)
cli._cmd_train = waiting
cli.main(["train", "--run", args["run"], "--preset", "tiny"])
"""


def start_holder(run: RunDir):
    child = start_driver(HOLDER, {"run": str(run.root)})
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "holding"
    return child


def test_a_second_command_on_a_busy_run_folder_stops_at_once_naming_the_holder(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    child = start_holder(run)
    try:
        for command in ("train", "sweep", "pipeline", "crossover", "evaluate"):
            with pytest.raises(SystemExit) as stopped:
                main([command, "--run", str(run.root)])
            assert stopped.value.code == 1
            message = capsys.readouterr().err
            assert f"is in use by pid {child.pid} (redheart train --run {run.root} --preset tiny" in message, command
            assert not run.config.exists()  # stopped before writing anything, its config included
    finally:
        child.kill()
        child.wait()


def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    child = start_holder(run)
    with pytest.raises(RunFolderBusy), run_lock(run, "second"):
        pass
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert run.lock.exists()  # the file stays; the lock was the dead process's open file, gone with it
    with run_lock(run, "after the kill"):
        assert '"command": "after the kill"' in run.lock.read_text()
    # The CLI goes past the lock too: evaluate now stops for its own reason, the missing final model.
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", "--run", str(run.root)])
    assert stopped.value.code == 2 and "in use by" not in capsys.readouterr().err


def test_sweep_trials_lock_only_their_own_trial(tmp_path):
    run = RunDir(tmp_path / "run")
    with run_lock(run, "trial 0", run.sweep / ".trial_0.lock"):
        with run_lock(run, "trial 1", run.sweep / ".trial_1.lock"):
            pass
        with pytest.raises(RunFolderBusy, match="trial 0"), run_lock(run, "again", run.sweep / ".trial_0.lock"):
            pass
