"""Unit conversions. Used only by loaders and printers: the library works in SI base units."""
import math

KiB = 2**10
MiB = 2**20
GiB = 2**30
TiB = 2**40
KB = 1e3
MB = 1e6
GB = 1e9
TB = 1e12
TFLOPS = 1e12
US = 1e-6
MS = 1e-3

DTYPE_BYTES = {
    "fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5,
}


def dtype_bytes(dtype: str) -> float:
    from simulator.core.errors import RoofplanError, did_you_mean
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise RoofplanError(
            f"unknown dtype '{dtype}'{did_you_mean(dtype, DTYPE_BYTES)}; use one of {', '.join(DTYPE_BYTES)}"
        ) from None


def fmt_bytes(n: float) -> str:
    """Human-readable binary size: 17.5 GiB (1.2e+06 TiB beyond a thousand TiB; nan/inf as such)."""
    if not math.isfinite(n):
        return f"{n} B"
    if abs(n) >= 1e3 * TiB:
        return f"{n / TiB:.3g} TiB"
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_time(t: float) -> str:
    """Human-readable duration: 8.02 ms (nan/inf as such)."""
    if not math.isfinite(t):
        return f"{t} s"
    if t >= 1:
        return f"{t:.3g} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} us"


def fmt_rate(x: float) -> str:
    """A rate for a table: thousands separated, two significant digits below 10 (0.46, not 0)."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"


def fmt_energy(j: float) -> str:
    """Joules for a table: J, kJ below a kWh, then kWh, MWh, GWh (nan/inf as such)."""
    if not math.isfinite(j):
        return f"{j} J"
    kwh = j / 3.6e6
    if kwh < 1:
        return f"{j:.3g} J" if abs(j) < 1e3 else f"{j / 1e3:.3g} kJ"
    for unit, size in (("GWh", 1e6), ("MWh", 1e3)):
        if kwh >= size:
            return f"{kwh / size:.3g} {unit}"
    return f"{kwh:.3g} kWh"


def fmt_mass_g(g: float) -> str:
    """Grams of CO2e for a table: g, kg, t."""
    if not math.isfinite(g):
        return f"{g} g"
    for unit, size in (("t", 1e6), ("kg", 1e3)):
        if abs(g) >= size:
            return f"{g / size:.3g} {unit}"
    return f"{g:.3g} g"


def fmt_duration(t: float) -> str:
    """A run's length: milliseconds to years."""
    if not math.isfinite(t):
        return f"{t} s"
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if t >= size:
            return f"{t / size:.3g} {unit}"
    return fmt_time(t)
