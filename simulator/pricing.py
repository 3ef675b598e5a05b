"""GPU-hour prices from the cloud instances in hardware_specs/systems (price_usd_per_h / gpu_count)."""
from __future__ import annotations

from .specs import list_names, load_system


def instance_prices(gpu_name: str) -> list[tuple[float, str]]:
    """(USD per GPU-hour, instance name) for every priced system built from `gpu_name`, cheapest first."""
    out = []
    for name in list_names("system"):
        s = load_system(name)
        if s.gpu.name == gpu_name and s.price_usd_per_h:
            out.append((s.price_usd_per_h / s.gpu_count, name))
    return sorted(out)


def cheapest_price_per_gpu_h(gpu_name: str) -> tuple[float | None, str | None]:
    prices = instance_prices(gpu_name)
    return prices[0] if prices else (None, None)
