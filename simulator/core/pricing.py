"""GPU-hour prices from the cloud instances in hardware_specs/systems (price_usd_per_h / gpu_count)."""
from __future__ import annotations

from functools import lru_cache

from simulator.core.specs import SPEC_DIRS, list_names, load_system, specs_root


def _signature() -> tuple:
    """Which system files exist and when they changed: the cache below is keyed on it, so an
    edited or added spec is read again (no stale answers)."""
    folder = specs_root() / SPEC_DIRS["system"]
    return (str(folder),) + tuple((p.name, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.yaml")))


@lru_cache(maxsize=8)
def _priced_systems(signature: tuple) -> tuple[tuple[str, str, float], ...]:
    out = []
    for name in list_names("system"):
        s = load_system(name)
        if s.price_usd_per_h:
            out.append((s.gpu.name, name, s.price_usd_per_h / s.gpu_count))
    return tuple(out)


def instance_prices(gpu_name: str) -> list[tuple[float, str]]:
    """(USD per GPU-hour, instance name) for every priced system built from `gpu_name`, cheapest first."""
    return sorted((price, name) for gpu, name, price in _priced_systems(_signature()) if gpu == gpu_name)


def cheapest_price_per_gpu_h(gpu_name: str) -> tuple[float | None, str | None]:
    prices = instance_prices(gpu_name)
    return prices[0] if prices else (None, None)
