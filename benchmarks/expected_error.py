"""The expected-error table: how far predictions are off at each calibration level, measured.

    python benchmarks/expected_error.py [--write]

Prints the rows of hardware_specs/profiles/expected_error.yaml computed from the measurements
(see simulator.calibration.accuracy.validation_levels); --write rewrites that file. Every
prediction's `expected_error` comes from it (simulator.core.expected_error).
"""
import sys
from pathlib import Path

import yaml

from simulator.calibration.accuracy import validation_levels
from simulator.core.expected_error import table_path
from simulator.core.paths import REPO_ROOT

sys.path.insert(0, str(Path(__file__).resolve().parent))
import megatron_weak_scaling  # noqa: E402

END_TO_END = REPO_ROOT.parent / "shared" / "measurements" / "h100-sxm" / "end_to_end.yaml"
STEP_TIMES = REPO_ROOT / "benchmarks" / "data" / "distserve" / "a100-step-times.yaml"


def levels() -> dict:
    return validation_levels(END_TO_END, STEP_TIMES, megatron_weak_scaling.rows())


def main() -> int:
    if not END_TO_END.is_file():
        print(f"no measurements at {END_TO_END}")
        return 0
    rows = levels()
    print(f"{'level':36s} {'MAPE':>7s} {'worst':>7s} {'cases':>5s}  source")
    for key, r in rows.items():
        print(f"{key:36s} {100 * r['time_mape']:6.1f}% {100 * r['time_worst']:6.1f}% {r['cases']:5d}  {r['source']}")
    if "--write" in sys.argv:
        doc = {"source": "written by `python benchmarks/expected_error.py --write`; tests/core/test_expected_error.py "
                         "re-computes the rows and compares", "levels": rows}
        table_path().write_text(yaml.safe_dump(doc, sort_keys=False, width=110))
        print(f"wrote {table_path().relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
