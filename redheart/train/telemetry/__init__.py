"""What training records: the per-epoch metrics log, TensorBoard scalars, module statistics, progress reports."""
