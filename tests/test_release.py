"""The student edition: the transform on text and cells, and whole releases of a demo project and of the real repo."""
import ast
import json
import os
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


def test_message_is_the_docstrings_first_paragraph_on_one_line():
    src = ('def f(x):\n    """Return `x` doubled, for a docstring wrapped\n    at the line limit.\n\n    More."""\n'
           '    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION')
    assert student_source(src).split("\n")[-1] == \
        '    raise NotImplementedError("f: Return `x` doubled, for a docstring wrapped at the line limit.")'


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
def test_every_exercise_is_tested_before_the_next_one(name):
    "Immediate feedback: after each exercise cell, a test cell (not `#| export`) runs before the next exercise."
    cells = [c.source for c in jupytext.read(REPO / "nbs" / f"{name}.py").cells if c.cell_type == "code"]
    exercises = [i for i, c in enumerate(cells) if BEGIN in c]
    untested = [cells[i].splitlines()[1:3] for i, j in zip(exercises, exercises[1:] + [len(cells)])
                if all(re.search(r"^#\|\s*export", cells[k], re.M) for k in range(i + 1, j))]
    assert not untested, f"{name}: exercises with no test cell before the next exercise: {untested}"


@pytest.mark.parametrize("name", REAL_MODULES)
def test_every_stub_states_its_contract(name):
    "A stub's message is its exercise's docstring; a bare 'implement NAME' tells a student nothing."
    student = student_notebook(jupytext.read(REPO / "nbs" / f"{name}.py"), name)
    messages = [m for c in student.cells if c.cell_type == "code" for m in _STUB.findall(c.source)]
    assert messages, f"{name} has no stubs"
    bare = [m for m in messages if m.startswith("implement ")]
    assert not bare, f"{name}: stubs without a docstring: {bare}"


# The student edition as a student installs it (slow: a venv and `pip install`, about 40 s with pip's cache)

_RUN_TO_FIRST_ERROR = """
import json, os, sys
from pathlib import Path
from execnb.nbio import read_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.process import extract_directives
import numpy, matplotlib.pyplot  # imported once; each notebook runs in a forked child that has them
flags, notebooks = set(sys.argv[1].split()), sys.argv[2:]
os.environ["IN_TEST"] = "1"
def skip(cell):  # the cells `tito test` skips (tito/nbrun.py)
    if cell.cell_type != "code" or "nbdev_export" + "(" in cell.source: return True
    d = extract_directives(cell, remove=False)
    return d.get("eval:", [""])[0].lower() == "false" or bool(flags & d.keys())
def run(fn):
    shell, result = CaptureShell(fn), {"notebook": fn.stem, "cell": None}
    with working_directory(fn.parent):
        for i, cell in enumerate(read_nb(fn).cells):
            if skip(cell): continue
            shell.cell(cell)
            if shell.exc is not None:
                result |= {"cell": i, "type": type(shell.exc).__name__, "message": str(shell.exc)}
                break
    os.write(1, (json.dumps(result) + "\\n").encode())  # fd 1: the shell may still hold sys.stdout
for fn in (Path(p).resolve() for p in notebooks):  # one child per notebook: a notebook patches classes the next one imports
    pid = os.fork()
    if pid == 0:
        try: run(fn)
        except BaseException as e: os.write(2, f"{fn.name}: {e!r}\\n".encode())
        finally: os._exit(0)
    os.waitpid(pid, 0)
"""


def _readme_start_command(readme: str) -> str:
    "The one-line command in the fenced block under the student README's '## Start' heading."
    start = readme.split("## Start", 1)[1]
    block = re.search(r"```bash\n(.*?)\n```", start, re.S)
    assert block and "\n" not in block.group(1).strip(), "the README's start block is not one command"
    return block.group(1).strip()


def _first_exercise(ipynb) -> tuple[int, int, str]:
    "(cell of the first stub, cell of the next stub or the end, the first stub's message) of a student notebook."
    cells = json.loads(ipynb.read_text())["cells"]
    src = lambda c: c["source"] if isinstance(c["source"], str) else "".join(c["source"])
    stubs = [(i, ast.literal_eval(f'"{m}"')) for i, c in enumerate(cells) if c["cell_type"] == "code"
             for m in _STUB.findall(src(c))]
    assert stubs, f"{ipynb.name} has no stubs"
    first, message = stubs[0]
    return first, next((i for i, _ in stubs if i > first), len(cells)), message


@pytest.mark.install
@pytest.mark.skipif((REPO / MARKER_FILE).is_file(), reason="this checkout is itself a student edition")
def test_student_edition_installs_from_its_readme_and_each_notebook_runs_to_its_first_stub(full_edition, tmp_path):
    """The released student edition, installed with its README's command (python3 -m venv, pip install -e),
    imports every package module without error; in that venv each module notebook, with the modules before it
    solved (the full edition's package first on PYTHONPATH, as a student who works in order has them), runs its
    cells in order and stops at the NotImplementedError of its own first exercise: no ImportError, no other
    error, nothing earlier. The README's last step, `tito status`, runs every module's tests (minutes), so
    only its presence is checked."""
    student = tmp_path / "student"
    release(Project(REPO), student)
    steps = _readme_start_command((student / "README.md").read_text()).split(" && ")
    assert steps[:2] == ["python3 -m venv .venv", '.venv/bin/pip install -e ".[dev]"'], steps
    assert steps[2:] == [".venv/bin/tito status"], steps
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "IN_TEST")}
    proc = subprocess.run(["bash", "-c", " && ".join(steps[:2])], cwd=student, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    python = student / ".venv" / "bin" / "python"
    assert (student / ".venv" / "bin" / "tito").is_file()
    # the student's package, from the editable install (run outside the folder): every module imports
    code = ("import importlib, pkgutil, tinytorch; print(tinytorch.__file__); "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(tinytorch.__path__, 'tinytorch.')]")
    proc = subprocess.run([str(python), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(student / "tinytorch" / "__init__.py")
    runner = tmp_path / "run_to_first_error.py"
    runner.write_text(_RUN_TO_FIRST_ERROR)

    nb_env = env | {"PYTHONPATH": str(full_edition)}
    proc = subprocess.run([str(python), str(runner), " ".join(Project(REPO).tst_flags),
                           *[str(student / "nbs" / f"{name}.ipynb") for name in REAL_MODULES]],
                          cwd=student, env=nb_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the runner failed:\n{proc.stderr[-3000:]}"
    results = {r["notebook"]: r for r in map(json.loads, re.findall(r"^\{\"notebook\": .*$", proc.stdout, re.M))}
    assert sorted(results) == REAL_MODULES, proc.stderr[-3000:]
    problems = []
    for name, got in results.items():
        first, nxt, message = _first_exercise(student / "nbs" / f"{name}.ipynb")
        where = f"cell {got['cell']}" if got["cell"] is not None else "nowhere"
        if got["cell"] is None or got["type"] != "NotImplementedError" or got["message"] != message \
                or not first <= got["cell"] < nxt:
            problems.append(f"{name}: stopped {where} with {got.get('type')}: {got.get('message')!r}; expected the "
                            f"stub of its first exercise (cell {first}, its tests before cell {nxt}): {message!r}")
    assert not problems, "\n".join(problems)
