"""Scores of predictions against targets, shared by training, selection and evaluation: the metrics, bootstrap
intervals, and the baselines every result is read against."""
