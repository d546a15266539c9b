"""The learning-rate sweep: trials on disk, the selection score, and its plot."""

from redheart.train.sweep.run import collect, format_choice, run_sweep, run_trial, trial_count
from redheart.train.sweep.score import choose, format_lr, rank

__all__ = ["choose", "collect", "format_choice", "format_lr", "rank", "run_sweep", "run_trial", "trial_count"]
