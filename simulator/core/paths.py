"""Where the data folders are (specs, model zoo, serving workloads, notebook output).

A data folder (hardware_specs/, workloads/models/, ...) is looked up in this order:
  1. the environment variable the caller names (ROOFPLAN_HW_DIR, ROOFPLAN_MODELS_DIR): private
     specs, a model zoo, a test's copy;
  2. the checkout this code runs from (REPO_ROOT: a source tree or an editable install), which
     is the source of truth;
  3. the copy a wheel carries in simulator/_data/ (setup.py copies the top-level folders there
     when it builds one), for a plain `pip install .`.
"""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DATA = Path(__file__).resolve().parents[1] / "_data"

# Every variable data_dir is called with, and what it replaces (README, `roofplan --help`).
DATA_ENV_VARS = {
    "ROOFPLAN_HW_DIR": "hardware_specs/",
    "ROOFPLAN_MODELS_DIR": "workloads/models/",
    "ROOFPLAN_SERVING_DIR": "workloads/serving/",
}


def is_checkout(root: Path = REPO_ROOT) -> bool:
    """A source tree (pyproject.toml beside the package), not the site-packages of an installed
    copy, where a folder named workloads/ could belong to another distribution."""
    return (root / "pyproject.toml").is_file() and (root / "simulator").is_dir()


def data_dir(env: str, *default: str) -> Path:
    """The folder `env` names, else `default` (path parts under the repository root) in the
    checkout, else in the installed package data."""
    from simulator.core.errors import RoofplanError
    override = os.environ.get(env)
    if override:
        path = Path(override)
        if not path.is_dir():
            raise RoofplanError(f"{path} not found: {env} must name a folder like the project's "
                                f"{'/'.join(default)}/; fix or unset it")
        return path
    roots = ([REPO_ROOT] if is_checkout() else []) + [PACKAGE_DATA]
    for root in roots:
        path = root.joinpath(*default)
        if path.is_dir():
            return path
    where = " or ".join(str(r.joinpath(*default)) for r in roots)
    raise RoofplanError(f"{where} not found: this roofplan has no {'/'.join(default)}/; reinstall it from a "
                        f"checkout or its sdist (pip install .), or set {env} to the folder")
