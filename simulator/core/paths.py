"""Where the repository's data folders are (specs, model zoo, serving workloads, notebook output)."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
