"""A wheel is a working roofplan: built offline from the sources, installed into a fresh venv
outside the repository, it finds its hardware specs and models (simulator/_data/, copied by
setup.py) and prints the same numbers as the checkout.

The fresh venv gets the dependencies through a .pth line pointing at this venv's site-packages
(written after the install, so pip never sees the checkout's editable roofplan there), and the
wheel goes in with --no-deps: no index is ever asked. Runs in `make test` (about 10 s).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from simulator.core.paths import DATA_ENV_VARS, REPO_ROOT

SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "simulator", "planners",
           "hardware_specs", "workloads")
PREDICT = ["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "decode",
           "--batch", "8", "--context", "2048", "--format", "json"]
OFFLOAD = ["plan", "offload", "--model", "opt-175b", "--hardware", "flexgen-t4", "--phase", "decode",
           "--format", "json"]
TIMEOUT_S = 60


def _env() -> dict:
    """No data-folder overrides, no PYTHONPATH, no index: what a user's shell would have."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOFPLAN_") and k != "PYTHONPATH"}
    return {**env, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "MPLBACKEND": "Agg"}


def _run(cmd, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(bin folder of a fresh venv with the wheel installed, a working folder outside the repo, the wheel)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"          # a copy: the build writes build/ and *.egg-info beside the sources
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "_data")
    for name in SOURCES:
        p = REPO_ROOT / name
        (shutil.copytree(p, src / name, ignore=skip) if p.is_dir() else shutil.copy2(p, src / name))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src], tmp)
    wheel, = (tmp / "dist").glob("roofplan-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", wheel], tmp)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "roofplan-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp / "elsewhere"
    work.mkdir()
    return venv / "bin", work, wheel


def test_wheel_carries_the_data_folders(installed):
    _, _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("hardware_specs", "workloads"):
        want = {f"simulator/_data/{p.relative_to(REPO_ROOT).as_posix()}"
                for p in (REPO_ROOT / name).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
        assert want and want <= set(names), sorted(want - set(names))[:5]
    tops = {n.split("/")[0] for n in names}
    assert tops == {"simulator", "planners", wheel.name.split("-py3")[0] + ".dist-info"}


def test_installed_copy_reads_its_own_data(installed):
    bin_, work, _ = installed
    out = _run([bin_ / "python", "-c", "import simulator.core.specs as s, simulator.core.models as m; "
                "print(s.specs_root()); print(m.models_root())"], work).stdout.split()
    venv = bin_.parent.resolve()
    for path in out:      # the wheel's copy, not the checkout this test runs from
        assert Path(path).resolve().is_relative_to(venv) and "/simulator/_data/" in path, out


def _without_solve_time(plan: dict) -> dict:
    return {**plan, "solver": {k: v for k, v in plan["solver"].items() if k != "time_s"}}


def test_installed_roofplan_answers_as_the_checkout(installed):
    bin_, work, _ = installed
    checkout = Path(sys.executable).parent / "roofplan"
    check = _run([bin_ / "roofplan", "hw", "check"], work).stdout
    assert check == _run([checkout, "hw", "check"], work).stdout
    assert re.search(r"\d+ gpus, .*: all valid", check)
    pred = json.loads(_run([bin_ / "roofplan", *PREDICT], work).stdout)
    assert pred == json.loads(_run([checkout, *PREDICT], work).stdout)
    assert pred["fits"] and pred["time_s"] > 0
    plan = json.loads(_run([bin_ / "roofplan", *OFFLOAD], work).stdout)
    assert _without_solve_time(plan) == _without_solve_time(json.loads(_run([checkout, *OFFLOAD], work).stdout))


def test_every_data_folder_variable_is_documented():
    """Each environment variable passed to data_dir is in DATA_ENV_VARS (which `roofplan --help`
    prints) and in the README."""
    used = set()
    for root in ("simulator", "planners"):
        for p in (REPO_ROOT / root).rglob("*.py"):
            used |= set(re.findall(r"data_dir\(\s*\"(ROOFPLAN_\w+)\"", p.read_text(encoding="utf-8")))
    assert used and used <= set(DATA_ENV_VARS), used - set(DATA_ENV_VARS)
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    from simulator.cli.main import build_parser
    helptext = build_parser().format_help()
    for var in DATA_ENV_VARS:
        assert var in readme and var in helptext
