"""The student edition: the transform on text and cells, and whole releases of a demo project and of the real repo."""
import json
import re
import shutil
import subprocess
import sys

import jupytext

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from conftest import REPO, SOLUTIONS
from tito.nbrun import run_notebook
from tito.project import Project, TitoError, run_nbdev_export
from tito.release import MARKER_FILE, BEGIN, END, ReleaseError, release, student_notebook, student_source

PATCHED = '''#| export
@patch
def reshape(self: Tensor, *shape) -> Tensor:
    "Return a tensor with the same data and a new shape."
    ### BEGIN SOLUTION
    data = self.data.reshape(*shape)
    return Tensor(data)
    ### END SOLUTION'''


# The transform on one cell

def test_solution_block_becomes_one_raise_at_marker_indent():
    assert student_source(PATCHED) == '''#| export
@patch
def reshape(self: Tensor, *shape) -> Tensor:
    "Return a tensor with the same data and a new shape."
    raise NotImplementedError("Tensor.reshape: Return a tensor with the same data and a new shape.")'''


def test_message_names_class_method_and_falls_back():
    in_class = 'class Tensor:\n    def sum(self):\n        "Sum of all elements."\n        ### BEGIN SOLUTION\n        return 0\n        ### END SOLUTION'
    assert student_source(in_class).split("\n")[-1] == '        raise NotImplementedError("Tensor.sum: Sum of all elements.")'
    no_doc = 'def relu(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION'
    assert student_source(no_doc).split("\n")[-1] == '    raise NotImplementedError("implement relu")'
    top_level = '#| export\n### BEGIN SOLUTION\nEPS = 1e-5\n### END SOLUTION'
    assert student_source(top_level) == '#| export\nraise NotImplementedError("implement this exercise")'


def test_nearest_enclosing_def_wins_and_code_after_block_stays():
    src = ('def outer(x):\n    "Outer."\n    def inner(y): return y\n    ### BEGIN SOLUTION\n    z = inner(x)\n'
           '    ### END SOLUTION\n    return z')
    assert student_source(src).split("\n")[3:] == ['    raise NotImplementedError("outer: Outer.")', '    return z']


def test_message_with_quotes_is_valid_python():
    src = 'def f(x):\n    "Say \\"hi\\" to `x`, \\\\n not a newline."\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION'
    ns = {}
    exec(student_source(src), ns)
    with pytest.raises(NotImplementedError, match='f: Say "hi" to `x`, \\\\n not a newline.'): ns["f"](1)


@pytest.mark.parametrize("src, problem", [
    (f"def f():\n    {BEGIN}\n    return 1", "BEGIN SOLUTION' without an '### END"),
    (f"def f():\n    return 1\n    {END}", "END SOLUTION' without a '### BEGIN"),
    (f"def f():\n    {BEGIN}\n    {BEGIN}\n    return 1\n    {END}\n    {END}", "nested"),
    ("def f():\n    ## BEGIN SOLUTION\n    return 1\n    ### END SOLUTION", "malformed"),
])
def test_bad_markers_raise_with_cell_and_line(src, problem):
    with pytest.raises(ReleaseError, match=f"nbs/x.py: cell 4, line \\d: .*{problem}"):
        student_source(src, "nbs/x.py: cell 4")


# The transform on a notebook

def _notebook(*sources):
    cells = [new_markdown_cell(f"Write it between `{BEGIN}` and `{END}`.")]
    cells += [new_code_cell(s, execution_count=i, outputs=[new_output("stream", text="out\n")]) for i, s in enumerate(sources, 1)]
    return new_notebook(cells=cells)


def test_student_notebook_keeps_other_cells_and_strips_outputs():
    test_cell = "t = Tensor([1, 2, 3, 4]).reshape(2, 2)\nassert t.shape == (2, 2)"
    nb = _notebook(PATCHED, test_cell)
    student = student_notebook(nb, "nbs/01_tensor.py")
    assert student.cells[0].source == nb.cells[0].source  # prose may mention the markers
    assert "raise NotImplementedError" in student.cells[1].source and BEGIN not in student.cells[1].source
    assert student.cells[2].source == test_cell
    assert all(c.outputs == [] and c.execution_count is None for c in student.cells[1:])
    assert nb.cells[1].source == PATCHED and nb.cells[2].outputs  # the input is not modified
    full = student_notebook(nb, "nbs/01_tensor.py", solutions=True)
    assert full.cells[1].source == PATCHED and full.cells[1].outputs == []


def test_markers_outside_export_cell_name_notebook_and_cell():
    nb = _notebook("x = 1", PATCHED.replace("#| export\n", ""))
    with pytest.raises(ReleaseError, match=r"nbs/01_tensor.py: cell 3: solution markers outside an `#\| export` cell"):
        student_notebook(nb, "nbs/01_tensor.py")
    nb = _notebook(f"#| export\ndef f():\n    {BEGIN}\n    return 1")
    with pytest.raises(ReleaseError, match="nbs/01_tensor.py: cell 2, line 3: .* without an"):
        student_notebook(nb, "nbs/01_tensor.py", solutions=True)  # the full edition checks the markers too


# A whole release of the demo project

def _marker_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() in (BEGIN, END)]


def _cell_sources(ipynb) -> str:
    return "\n".join(c["source"] if isinstance(c["source"], str) else "".join(c["source"])
                     for c in json.loads(ipynb.read_text())["cells"])


@pytest.fixture
def student(demo_project, tmp_path):
    out = tmp_path / "student"
    mods = release(Project(demo_project), out)
    assert [m.stem for m in mods] == ["01_demo"]
    return out


def test_student_edition_fails_where_full_edition_passes(demo_project, student):
    ok, _, error = run_notebook(demo_project / "nbs" / "01_demo.ipynb", demo_project)
    assert ok, error
    ok, _, error = run_notebook(student / "nbs" / "01_demo.ipynb", student)
    assert not ok
    assert 'NotImplementedError: double: Return `x` times two.' in error


def test_student_edition_has_no_solution_text(student):
    py, ipynb = student / "nbs" / "01_demo.py", student / "nbs" / "01_demo.ipynb"
    lib = student / "tinytorch" / "core" / "demo.py"
    for text in (py.read_text(), _cell_sources(ipynb), lib.read_text()):
        for line in "\n".join(SOLUTIONS).split("\n"):
            assert line.strip() not in text
        assert not _marker_lines(text)
    assert '        raise NotImplementedError("Scaler.__call__: Return `x` times the factor.")' in lib.read_text()
    assert '    raise NotImplementedError("double: Return `x` times two.")' in py.read_text()


def test_student_notebook_has_no_outputs_and_stays_paired(student):
    cells = json.loads((student / "nbs" / "01_demo.ipynb").read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    py = student / "nbs" / "01_demo.py"
    before = py.read_text()
    proc = subprocess.run([sys.executable, "-m", "jupytext", "--sync", str(py)], cwd=student, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"Unchanged {py.with_suffix('.ipynb')}" in proc.stdout + proc.stderr
    assert py.read_text() == before


def test_student_project_layout(demo_project, student):
    assert (student / MARKER_FILE).is_file()
    assert (student / "settings.ini").read_text() == (demo_project / "settings.ini").read_text()
    assert (student / "tests" / "test_01_demo.py").is_file()
    assert (student / "tinytorch" / "_modidx.py").is_file()
    assert not (student / "release").exists()


def test_student_readme_says_what_the_edition_is_and_leaves_instructor_material_out(demo_project, tmp_path):
    for folder, text in [(".ci", "run"), (".github/workflows", "ci.yml"), ("benchmarks", "bench.py")]:
        (demo_project / folder).mkdir(parents=True)
        (demo_project / folder / text).write_text("x = 1\n")
    (demo_project / "README.md").write_text("# TinyTorch\n\n## An instructor's loop\ntito release, tito grade, CI\n")
    out = tmp_path / "student"
    release(Project(demo_project), out)
    readme = (out / "README.md").read_text()
    for phrase in ["student edition", "`tito status`", "FAIL", "exits with code 1", "nbs/01_demo.ipynb",
                   "`.ipynb` file", "paired source", "`tito export`", "tito test 01", "| 01 | Demo (`nbs/01_demo.ipynb`) |"]:
        assert phrase in readme, phrase
    for phrase in ["instructor", "tito release", "tito grade", "benchmark", "CI", ".ci/", "SOLUTION"]:
        assert phrase not in readme, phrase
    assert not (out / ".ci").exists() and not (out / ".github").exists() and (out / "benchmarks").is_dir()
    full = tmp_path / "full"
    release(Project(demo_project), full, solutions=True)
    assert (full / "README.md").read_text() == (demo_project / "README.md").read_text()


def test_release_of_one_module_leaves_the_others_out(demo_project, tmp_path):
    (demo_project / "nbs" / "02_extra.py").write_text("# %%\n#| default_exp core.extra\n\n# %%\n#| export\nX = 1\n")
    (demo_project / "tests" / "test_02_extra.py").write_text("def test_x(): assert True\n")
    out = tmp_path / "only01"
    release(Project(demo_project), out, ["1"])
    assert sorted(p.name for p in (out / "nbs").iterdir()) == ["01_demo.ipynb", "01_demo.py"]
    assert not (out / "tests" / "test_02_extra.py").exists()
    assert (out / "tinytorch" / "core" / "demo.py").is_file()


def test_release_refuses_unsafe_out(demo_project, tmp_path):
    project = Project(demo_project)
    for out, problem in [(demo_project / "nbs" / "x", "inside"), (demo_project / "tinytorch", "inside"),
                         (demo_project, "would contain"), (tmp_path, "would contain")]:
        with pytest.raises(TitoError, match=problem): release(project, out)
    other = tmp_path / "someone_elses"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(TitoError, match=f"not a previous release \\(no {re.escape(MARKER_FILE)}"):
        release(project, other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_release_overwrites_a_previous_release(demo_project, student):
    (student / "stale.txt").write_text("from the last release")
    release(Project(demo_project), student)
    assert not (student / "stale.txt").exists() and (student / MARKER_FILE).is_file()


def test_default_out_inside_root_is_not_copied_into_itself(demo_project):
    out = demo_project / "release" / "student"
    release(Project(demo_project), out)
    release(Project(demo_project), out)  # a second release must not copy the first one
    assert not (out / "release").exists()
    assert (out / "nbs" / "01_demo.py").is_file()


# The real curriculum

def _solution_lines(source: str) -> set[str]:
    "Stripped lines that occur inside solution blocks of `source` and nowhere outside them."
    inside, outside, in_block = set(), set(), False
    for line in source.splitlines():
        if line.strip() in (BEGIN, END): in_block = line.strip() == BEGIN
        elif line.strip(): (inside if in_block else outside).add(line.strip())
    return inside - outside


EXERCISE_FREE = {"00_timing"}  # shared code every module imports, so no part of it can be a stub
REAL_MODULES = sorted(p.stem for p in (REPO / "nbs").glob("[0-9][0-9]_*.py") if p.stem not in EXERCISE_FREE)


def test_exercise_free_modules_have_no_solution_blocks():
    for name in EXERCISE_FREE: assert BEGIN not in (REPO / "nbs" / f"{name}.py").read_text(), name
_STUB = re.compile(r'raise NotImplementedError\("(.*)"\)')


@pytest.fixture(scope="module")
def full_edition(tmp_path_factory):
    "The whole curriculum released with solutions kept, built by the same pipeline as the student edition."
    out = tmp_path_factory.mktemp("full") / "project"
    release(Project(REPO), out, solutions=True)
    return out


@pytest.mark.skipif((REPO / MARKER_FILE).is_file(), reason="this checkout is itself a student edition")
@pytest.mark.parametrize("name", REAL_MODULES)
def test_real_module_student_fails_on_its_own_stubs_full_passes(name, full_edition, tmp_path):
    "Module `name` as the student gets it, with the earlier modules solved: it fails at one of its own stubs."
    source = (REPO / "nbs" / f"{name}.py").read_text()
    solution = _solution_lines(source)
    assert solution, f"nbs/{name}.py has no solution blocks"
    ok, _, error = run_notebook(full_edition / "nbs" / f"{name}.ipynb", full_edition)
    assert ok, error
    project = tmp_path / "project"
    shutil.copytree(full_edition, project)
    student = student_notebook(jupytext.read(REPO / "nbs" / f"{name}.py"), name)
    jupytext.write(student, project / "nbs" / f"{name}.ipynb")
    jupytext.write(student, project / "nbs" / f"{name}.py", fmt="py:percent")
    run_nbdev_export(project)
    ok, _, error = run_notebook(project / "nbs" / f"{name}.ipynb", project)
    stubs = _STUB.findall((project / "nbs" / f"{name}.py").read_text())
    assert stubs and not ok and "NotImplementedError" in error, error
    assert any(msg in error for msg in stubs), f"{name} failed, but not at one of its own stubs:\n{error}"
    for text in ((project / "nbs" / f"{name}.py").read_text(), _cell_sources(project / "nbs" / f"{name}.ipynb")):
        lines = {l.strip() for l in text.splitlines()}
        assert not solution & lines, f"solution lines in the student edition: {sorted(solution & lines)}"
        assert not _marker_lines(text)  # prose may still mention the markers


@pytest.mark.parametrize("name", REAL_MODULES)
def test_every_stub_states_its_contract(name):
    "A stub's message is its exercise's docstring; a bare 'implement NAME' tells a student nothing."
    student = student_notebook(jupytext.read(REPO / "nbs" / f"{name}.py"), name)
    messages = [m for c in student.cells if c.cell_type == "code" for m in _STUB.findall(c.source)]
    assert messages, f"{name} has no stubs"
    bare = [m for m in messages if m.startswith("implement ")]
    assert not bare, f"{name}: stubs without a docstring: {bare}"
