"""A small nbdev project in a temp folder, for testing `tito` without touching the real notebooks."""
import shutil
from pathlib import Path

import jupytext
import pytest
from hypothesis import settings

# One hypothesis profile for the suite: the same examples on every run (same seed, same result), and no deadline
# (a shared machine makes single examples slow at random). A test file sets its own example count with a
# module-level `HYPOTHESIS = settings(max_examples=N)`, which the hook at the end applies to that file's tests
# only; a profile loaded by a test file would apply to every file collected before and after it.
settings.register_profile("tinytorch", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("tinytorch")

import tito
from tito.project import run_nbdev_export

REPO = Path(__file__).resolve().parents[1]

# The solution blocks of DEMO_NB, each line unique in the notebook, so a test can check none survives.
SOLUTIONS = [
    "    twice_the_input = x * 2\n    return twice_the_input",
    "        scaled_by_factor = x * self.factor\n        return scaled_by_factor",
]

DEMO_NB = f'''# %% [markdown]
# # Demo
# A module with two exercises.

# %%
#| default_exp core.demo

# %%
#| export
import numpy as np

# %%
#| export
def double(x: np.ndarray,  # input values
          ) -> np.ndarray:
    "Return `x` times two."
    ### BEGIN SOLUTION
{SOLUTIONS[0]}
    ### END SOLUTION

# %%
assert (double(np.array([1, 2])) == [2, 4]).all()

# %%
#| export
class Scaler:
    "Multiply by a fixed factor."
    def __init__(self, factor: float): self.factor = factor
    def __call__(self, x: np.ndarray) -> np.ndarray:
        "Return `x` times the factor."
        ### BEGIN SOLUTION
{SOLUTIONS[1]}
        ### END SOLUTION

# %%
assert (Scaler(3.0)(np.array([1.0])) == [3.0]).all()

# %%
#| notest
assert False, "a notest cell must be skipped"
'''

DEMO_TEST = '''import numpy as np

from tinytorch.core.demo import double


def test_double():
    assert (double(np.array([3])) == [6]).all()
'''


def write_project(root: Path, notebook: str = DEMO_NB) -> Path:
    "Write a project at `root`: the real settings.ini and jupytext.toml, `nbs/01_demo.py` and `tests/test_01_demo.py`."
    (root / "nbs").mkdir(parents=True)
    (root / "tests").mkdir()
    for name in ("settings.ini", "jupytext.toml"): shutil.copy(REPO / name, root / name)
    shutil.copy(REPO / "tests" / "test_notebooks.py", root / "tests" / "test_notebooks.py")
    (root / "nbs" / "01_demo.py").write_text(notebook, encoding="utf-8")
    (root / "tests" / "test_01_demo.py").write_text(DEMO_TEST, encoding="utf-8")
    return root


def pair_and_export(root: Path):
    "What `tito export` does, done directly: write each notebook's .ipynb, then run nbdev_export."
    for py in (root / "nbs").glob("*.py"): jupytext.write(jupytext.read(py), py.with_suffix(".ipynb"))
    run_nbdev_export(root)


@pytest.fixture
def demo_project(tmp_path) -> Path:
    "The demo project, paired and exported: the full edition."
    root = write_project(tmp_path / "demo")
    pair_and_export(root)
    return root


@pytest.fixture
def tito_on_path(monkeypatch):
    "Let child processes (pytest, `python -m tito.cli`) import this checkout's `tito` even if it is not installed."
    monkeypatch.setenv("PYTHONPATH", str(Path(tito.__file__).parents[1]))


class StubNotImplemented(BaseException):
    "A student's stub was reached. A BaseException, so hypothesis passes it on at once instead of shrinking."


def _fail_fast_on_stubs(inner):
    "Wrap a hypothesis test so that a stub's `NotImplementedError` ends it at once."
    def wrapper(*args, **kwargs):
        try: return inner(*args, **kwargs)
        except NotImplementedError as e: raise StubNotImplemented(f"not implemented yet: {e}") from None
    return wrapper


def pytest_collection_modifyitems(items):
    # Hypothesis shrinks any Exception over many examples before reporting it (55 s for module 01's untouched
    # student edition, against 19 s once solved); a stub needs no smaller example.
    for item in items:
        hyp = getattr(getattr(item, "obj", None), "hypothesis", None)
        if hyp is None: continue
        if not getattr(hyp.inner_test, "_fails_fast", False):
            hyp.inner_test = _fail_fast_on_stubs(hyp.inner_test)
            hyp.inner_test._fails_fast = True
        own = getattr(item.module, "HYPOTHESIS", None)
        if own is not None and getattr(item.obj, "_hypothesis_internal_use_settings", None) is settings.default:
            own(item.obj)  # the file's settings, unless the test carries its own @settings
