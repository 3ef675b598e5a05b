"""What pyproject.toml cannot say: a wheel carries the spec and model folders.

hardware_specs/ and workloads/ stay top-level folders of the repository (the source of truth,
read in place by a checkout and an editable install). A regular build copies them into the
built package as simulator/_data/, where `simulator.core.paths.data_dir` finds them in an
installed copy. MANIFEST.in puts them in the sdist, so a wheel built from it has them too.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA_FOLDERS = ("hardware_specs", "workloads")
PACKAGE_DATA_DIR = ("simulator", "_data")      # simulator.core.paths.PACKAGE_DATA


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):   # an editable install reads the folders in place
            return
        for name in DATA_FOLDERS:
            src = ROOT / name
            if not src.is_dir():
                raise SystemExit(f"{src} is missing: build roofplan from a checkout or its sdist")
            dst = Path(self.build_lib).joinpath(*PACKAGE_DATA_DIR, name)
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


setup(cmdclass={"build_py": BuildPyWithData})
