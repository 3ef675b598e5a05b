"""Accuracy of the shipped profiles on the shared H100 end-to-end measurements.

    python benchmarks/accuracy.py [path/to/end_to_end.yaml]

Prints case, measured, predicted and error for time and peak memory, then MAPE per group.
"""
import sys
from pathlib import Path

from simulator.core.paths import REPO_ROOT
from simulator.calibration.accuracy import compare_cases, load_cases, mape
from simulator.calibration.copy_fit import fitted_cases, in_sample_lines


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT.parent / "shared" / "measurements" / "h100-sxm" / "end_to_end.yaml"
    if not path.is_file():
        print(f"no measurements at {path}; pass the end_to_end.yaml path")
        return 0
    hardware, cases = load_cases(path)
    df = compare_cases(hardware, cases)
    print(f"{'case':44s} {'measured':>10s} {'predicted':>10s} {'error':>7s}   {'mem meas':>9s} {'mem pred':>9s} {'error':>7s}")
    for _, r in df.iterrows():
        if isinstance(r.get("error"), str):
            print(f"{r.id:44s} {r.measured_time_s * 1e3:8.2f}ms  not predicted: {r.error}")
            continue
        mem = ""
        if r.get("measured_memory_bytes") == r.get("measured_memory_bytes") and "measured_memory_bytes" in r:
            mem = f"{r.measured_memory_bytes / 1e9:8.2f}G {r.predicted_memory_bytes / 1e9:8.2f}G {100 * r.memory_error:+6.1f}%"
        print(f"{r.id:44s} {r.measured_time_s * 1e3:8.2f}ms {r.predicted_time_s * 1e3:8.2f}ms {100 * r.time_error:+6.1f}%   {mem}")
    print()
    for group, g in df.groupby("group"):
        mem = mape(g["memory_error"]) if "memory_error" in g else float("nan")
        mem_txt = f"  memory MAPE {100 * mem:5.1f}%" if mem == mem else ""
        print(f"{group:10s} cases {len(g):2d}  time MAPE {100 * mape(g.time_error):5.1f}%{mem_txt}")
    for line in in_sample_lines(fitted_cases(hardware, cases)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
