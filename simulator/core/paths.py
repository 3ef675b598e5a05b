"""Where the repository's data folders are (specs, model zoo, serving workloads, notebook output)."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir(env: str, *default: str) -> Path:
    """A data folder of the repository (hardware_specs/, workloads/...), or where `env` points.
    roofplan reads its specs from a checkout: an installed copy without them (a plain `pip
    install .`) must say so instead of finding no hardware and no models."""
    import os
    from simulator.core.errors import RoofplanError
    path = Path(os.environ.get(env) or REPO_ROOT.joinpath(*default))
    if not path.is_dir():
        raise RoofplanError(f"{path} not found: roofplan reads its specs from a checkout; install it with "
                            f"`pip install -e .` there (make demo does), or set {env} to the folder")
    return path
