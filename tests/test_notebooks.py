"""One test per notebook in nbs/: run it like `nbdev_test` and fail with the traceback it printed."""
from pathlib import Path

import pytest

from tito.nbrun import run_notebook
from tito.project import Project

ROOT = Path(__file__).resolve().parents[1]
NBS = Project(ROOT).nbs
NOTEBOOKS = sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith(("_", ".")))  # nbdev skips _ and . files


def test_nbs_has_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NBS}; run `tito export` to pair the .py sources"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook(ipynb: Path):
    ok, seconds, error = run_notebook(ipynb, ROOT)
    assert ok, f"{ipynb.name} failed after {seconds:.1f}s:\n{error}"
