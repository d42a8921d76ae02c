"""The suite's own hooks: a stub's NotImplementedError ends a hypothesis test at once."""
import shutil
import subprocess
import sys

from conftest import REPO

PROPERTY_TEST = '''from hypothesis import given, strategies as st
CALLS = []
@given(st.lists(st.integers(), min_size=3))
def test_stub(xs):
    CALLS.append(1)
    raise NotImplementedError("Tensor.sum: the sum of all elements")
def test_calls():
    assert len(CALLS) == 1, len(CALLS)
'''


def test_stub_in_property_test_is_not_shrunk(tmp_path):
    (tmp_path / "tests").mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_x.py").write_text(PROPERTY_TEST)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout
    assert "not implemented yet: Tensor.sum: the sum of all elements" in proc.stdout, proc.stdout


FILE_SETTINGS = '''from hypothesis import given, settings, strategies as st
HYPOTHESIS = settings(max_examples=7)
SEEN = []
@given(st.integers())
def test_file_settings(x): SEEN.append(x)
@settings(max_examples=3)
@given(st.integers())
def test_own_settings(x): SEEN.append(("own", x))
def test_counts():
    own = [s for s in SEEN if isinstance(s, tuple)]
    assert (len(SEEN) - len(own), len(own)) == (7, 3)
'''


def test_file_settings_apply_to_that_file_only(tmp_path):
    (tmp_path / "tests").mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_a.py").write_text(FILE_SETTINGS)
    (tmp_path / "tests" / "test_b.py").write_text("from hypothesis import settings\nHYPOTHESIS = settings(max_examples=1)\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert "3 passed" in proc.stdout, proc.stdout
