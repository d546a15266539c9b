"""The memory plan as text: one table of bytes per strategy, the budget, and the choice."""

from __future__ import annotations

from redheart.train.memory.plan import COMPONENTS, GiB, MemoryPlan


def _gib(size: int) -> str:
    return f"{size / GiB:7.2f}"


def format_memory_plan(plan: MemoryPlan) -> str:
    rdrop = f" ({plan.rows} forward rows: R-Drop's concatenated batch)" if plan.rows != plan.micro_batch else ""
    lines = [
        f"preset {plan.preset}: {plan.parameters:,} parameters; micro-batch {plan.micro_batch}{rdrop}",
        f"device budget: {plan.vram / GiB:.2f} GiB less {plan.reserve / GiB:.2f} GiB reserve "
        f"(CUDA context, fragmentation) = {plan.budget / GiB:.2f} GiB",
    ]
    columns = COMPONENTS + (("correction",) if plan.correction is not None else ())
    if plan.correction is not None:
        lines.append(plan.correction.describe())
    lines += [
        "",
        f"{'GiB on the device':<20}" + "".join(f"{name:>12}" for name in (*columns, "total", "host")) + "  fits",
    ]
    for footprint in plan.footprints:
        cells = [_gib(footprint.device.get(name, 0)) for name in columns]
        cells += [_gib(footprint.device_total), _gib(footprint.host_total)]
        fits = "yes" if footprint.device_total <= plan.budget else "no"
        lines.append(f"{footprint.strategy.name:<20}" + "".join(f"{cell:>12}" for cell in cells) + f"  {fits}")
    lines.append("")
    for footprint in plan.footprints:
        lines.append(f"{footprint.strategy.name}: {footprint.strategy.summary()} ({footprint.note})")
    lines.append("")
    if plan.chosen is None:
        smallest = min(plan.footprints, key=lambda f: f.device_total)
        lines.append(
            f"chosen: none fits. The leanest ({smallest.strategy.name}) needs {smallest.device_total / GiB:.2f} GiB "
            f"against a budget of {plan.budget / GiB:.2f} GiB; lower train.micro_batch, share the model over more GPUs "
            f"(--processes) or use a smaller preset."
        )
    else:
        chosen = plan.footprint(plan.chosen)
        lines.append(
            f"chosen: {plan.chosen}, the first strategy in speed order that fits "
            f"({chosen.device_total / GiB:.2f} of {plan.budget / GiB:.2f} GiB; "
            f"{chosen.host_total / GiB:.2f} GiB in host memory). Train with it: --set train.memory={plan.chosen}"
        )
    return "\n".join(lines)
