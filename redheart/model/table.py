"""The model's parameter table as text, for `redheart model --preset NAME`."""

from __future__ import annotations

from redheart.config import FULL_TOTAL, RunConfig
from redheart.model.model import parameter_table


def format_parameter_table(config: RunConfig) -> str:
    """Module, group, solved width, parameters, budget and ratio, built on the meta device (no weights)."""
    rows = parameter_table(config.model, config.encoder.dim, config.encoder.max_segments)
    lines = [f"{'module':<19}{'group':<18}{'width':>7}{'parameters':>15}{'budget':>15}{'ratio':>8}"]
    for row in rows:
        lines.append(
            f"{row['module']:<19}{row['group']:<18}{row['width']:>7}{row['parameters']:>15,}{row['budget']:>15,}"
            f"{row['ratio']:>8.3f}"
        )
    total, budget = sum(r["parameters"] for r in rows), sum(r["budget"] for r in rows)
    lines.append(f"{'total':<44}{total:>15,}{budget:>15,}{total / budget:>8.3f}")
    if config.preset == "full":
        lines.append(f"budget total: {FULL_TOTAL:,} (model / budget = {total / FULL_TOTAL:.4f})")
    return "\n".join(lines)
