"""The final evaluation (the one reading of the test split) and post-hoc calibration."""
