"""`tito`: the project and its modules, running a notebook, and the command line on a demo project."""
import subprocess
import sys

import jupytext
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import DEMO_NB, write_project
from tito.cli import main
from tito.nbrun import run_notebook
from tito.project import PLANNED, Project, TitoError, find_root


# Project and modules

def test_find_root_walks_up_and_fails_outside(tmp_path):
    root = write_project(tmp_path / "p")
    (root / "nbs" / "deep").mkdir()
    assert find_root(root / "nbs" / "deep") == root.resolve()
    with pytest.raises(TitoError, match="no settings.ini in"): find_root(tmp_path)


def test_modules_planned_present_and_targets(tmp_path):
    project = Project(write_project(tmp_path / "p"))
    mods = project.modules()
    assert [m.num for m in mods] == [f"{i:02d}" for i in range(0, 21)] and len(PLANNED) == 21
    demo, layers = mods[1], mods[3]
    assert (demo.stem, demo.present, demo.default_exp) == ("01_demo", True, "core.demo")
    assert demo.lib_file == project.root / "tinytorch" / "core" / "demo.py"
    assert demo.test_files == [project.root / "tests" / "test_01_demo.py"]
    assert (layers.stem, layers.present, layers.lib_file) == ("03_layers", False, None)
    assert project.module("1") is not None and project.notebooks() == [demo.py]
    with pytest.raises(TitoError, match="no module 99; modules are 00-20"): project.module("99")
    with pytest.raises(TitoError, match="module 03 \\(layers\\) has no notebook yet"): project.module("03")


# Running a notebook

def test_run_notebook_passes_skips_flagged_cells_and_uses_root_package(demo_project):
    nb = demo_project / "nbs" / "01_demo.ipynb"
    text = nb.read_text()
    assert "a notest cell must be skipped" in text  # so passing means the flagged cell was skipped
    ok, seconds, error = run_notebook(nb, demo_project)
    assert ok and error == "" and seconds > 0, error
    # `import tinytorch` must resolve to the project's own package, not an installed one
    check = demo_project / "nbs" / "check_path.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(
        "import os, tinytorch\nfrom pathlib import Path\n"
        f"assert Path(tinytorch.__file__).resolve().parent == Path({str(demo_project)!r}) / 'tinytorch', tinytorch.__file__\n"
        "assert os.environ['IN_TEST'] == '1'")]), check)
    ok, _, error = run_notebook(check, demo_project)
    assert ok, error


def test_run_notebook_returns_traceback(demo_project):
    py = demo_project / "nbs" / "01_demo.py"
    broken = demo_project / "nbs" / "02_broken.ipynb"
    nb = jupytext.reads(py.read_text().replace("== [2, 4]", "== [2, 5]"), fmt="py:percent")
    jupytext.write(nb, broken)
    ok, _, error = run_notebook(broken, demo_project)
    assert not ok
    assert "AssertionError" in error and "assert (double(np.array([1, 2])) == [2, 5]).all()" in error


# The command line

def _one_error_line(capsys, expected: str):
    out, err = capsys.readouterr()
    assert err.strip() == f"tito: error: {expected}", err
    assert "Traceback" not in out + err


def test_cli_user_errors(demo_project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(demo_project / "nbs")
    assert main(["test", "99"]) == 2
    _one_error_line(capsys, "no module 99; modules are 00-20")
    assert main(["test", "3"]) == 2
    _one_error_line(capsys, "module 03 (layers) has no notebook yet: nbs/03_layers.py is missing")
    assert main(["release", "--out", "sub"]) == 2  # relative to the cwd, which is nbs/
    _one_error_line(capsys, f"--out {demo_project / 'nbs' / 'sub'} is inside {demo_project / 'nbs'}; "
                            "choose a folder outside the notebooks and the package")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert main(["status"]) == 2
    _one_error_line(capsys, f"no settings.ini in {empty} or any parent folder; run tito inside the project")


def test_cli_error_in_a_real_process(demo_project, tito_on_path):
    proc = subprocess.run([sys.executable, "-m", "tito.cli", "test", "99"], cwd=demo_project, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "tito: error: no module 99; modules are 00-20\n" and proc.stdout == ""


def test_cli_export_works_even_with_in_test_set(tmp_path, monkeypatch, capsys):
    root = write_project(tmp_path / "p")
    monkeypatch.chdir(root)
    monkeypatch.setenv("IN_TEST", "1")  # as left by nbdev's notebook tester; nbdev_export would silently skip
    assert main(["export"]) == 0
    assert "synced nbs/01_demo.py <-> nbs/01_demo.ipynb" in capsys.readouterr().out
    assert (root / "nbs" / "01_demo.ipynb").is_file()
    assert "def double(" in (root / "tinytorch" / "core" / "demo.py").read_text()


def _status_row(out: str, num: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.startswith(num + " "))


def test_cli_status_reports_export_and_tests(demo_project, monkeypatch, capsys, tito_on_path):
    monkeypatch.chdir(demo_project)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert _status_row(out, "01")[:5] == ["01", "demo", "yes", "yes", "pass"]
    assert _status_row(out, "03") == ["03", "layers", "missing", "-", "-", "-"]
    assert len([l for l in out.splitlines() if l[:2].isdigit()]) == 21
    # an edited source that was not exported: the notebook pair and the package are both stale
    py = demo_project / "nbs" / "01_demo.py"
    py.write_text(DEMO_NB.replace("twice_the_input = x * 2", "twice_the_input = x + x"))
    (demo_project / "tests" / "test_01_demo.py").write_text("def test_fails():\n    assert 1 == 2\n")
    assert main(["status"]) == 1
    out = capsys.readouterr().out
    assert _status_row(out, "01")[:5] == ["01", "demo", "stale", "stale", "FAIL"]
    assert "01_demo: pytest: " in out and "01_demo: exported is 'stale'" in out


def test_cli_test_runs_notebook_and_module_tests(demo_project, monkeypatch, capfd, tito_on_path):
    monkeypatch.chdir(demo_project)
    assert main(["test", "01"]) == 0
    out = capfd.readouterr().out
    assert "2 passed" in out
    (demo_project / "tests" / "test_01_demo.py").write_text("def test_fails():\n    assert 1 == 2\n")
    assert main(["test", "1"]) == 1
    assert "1 failed, 1 passed" in capfd.readouterr().out


def test_cli_test_exports_a_stale_notebook_first(demo_project, tmp_path, monkeypatch, capfd, tito_on_path):
    student = tmp_path / "student"
    monkeypatch.chdir(demo_project)
    assert main(["release", "--out", str(student)]) == 0
    # the student fills in the notebook but does not run `tito export`: the package still holds the stubs
    jupytext.write(jupytext.reads(DEMO_NB, fmt="py:percent"), student / "nbs" / "01_demo.ipynb")
    assert "NotImplementedError" in (student / "tinytorch" / "core" / "demo.py").read_text()
    monkeypatch.chdir(student)
    capfd.readouterr()
    assert main(["test", "01"]) == 0
    out = capfd.readouterr().out
    assert "tito test: 01_demo: notebook and package differ (stale); running `tito export` first" in out
    assert "2 passed" in out and "NotImplementedError" not in (student / "tinytorch" / "core" / "demo.py").read_text()


def test_cli_release_writes_default_folder(demo_project, monkeypatch, capsys):
    monkeypatch.chdir(demo_project)
    assert main(["release"]) == 0
    out = demo_project / "release" / "student"
    assert capsys.readouterr().out.strip() == f"wrote the student edition of modules 01 to {out}"
    assert "raise NotImplementedError" in (out / "tinytorch" / "core" / "demo.py").read_text()


def test_cli_milestone_lists_runs_and_refuses_unknown(demo_project, monkeypatch, capfd):
    monkeypatch.chdir(demo_project)
    assert main(["milestone"]) == 2 and "no milestone scripts" in capfd.readouterr().err
    folder = demo_project / "milestones"
    folder.mkdir()
    (folder / "_common.py").write_text("X = 1\n")
    (folder / "echo.py").write_text('"""Print the arguments and exit with their count."""\nimport sys\n'
                                    'print("args", sys.argv[1:])\nsys.exit(len(sys.argv) - 1)\n')
    assert main(["milestone"]) == 0
    out = capfd.readouterr().out
    assert "echo" in out and "Print the arguments" in out and "_common" not in out
    assert main(["milestone", "echo", "--epochs", "3"]) == 2          # the script's own exit code comes back
    assert "args ['--epochs', '3']" in capfd.readouterr().out
    assert main(["milestone", "nope"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["tito: error: no milestone 'nope'; milestones are echo"]
