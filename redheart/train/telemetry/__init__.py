"""What training records: the per-epoch metrics log, TensorBoard scalars, module statistics, progress reports."""

from redheart.train.telemetry.module_statistics import GradientProbe, module_stats
from redheart.train.telemetry.progress import progress_report, write_progress
from redheart.train.telemetry.records import RunTelemetry, append_metrics, log_scalars, peak_memory_bytes, read_metrics

__all__ = [
    "GradientProbe",
    "RunTelemetry",
    "append_metrics",
    "log_scalars",
    "module_stats",
    "peak_memory_bytes",
    "progress_report",
    "read_metrics",
    "write_progress",
]
