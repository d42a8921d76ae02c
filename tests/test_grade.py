"""`tito grade` on a small class of the demo project: complete, wrong, never ends, and writes outside its copy."""
import csv
import shutil

import jupytext

from conftest import DEMO_NB, SOLUTIONS
from tito.grade import grade
from tito.project import Project
from tito.release import release


def _student(edition, submissions, name: str, notebook: str):
    "A student's folder: a copy of the student edition with `notebook` saved from Jupyter (the .ipynb is newer)."
    folder = submissions / name
    shutil.copytree(edition, folder)
    nb = jupytext.reads(notebook, fmt="py:percent")
    jupytext.write(nb, folder / "nbs" / "01_demo.ipynb")


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_grade_a_class(demo_project, tmp_path, tito_on_path):
    project = Project(demo_project)
    edition = tmp_path / "edition"
    release(project, edition)
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    _student(edition, submissions, "ada", DEMO_NB)                                           # complete
    _student(edition, submissions, "bob", DEMO_NB.replace("x * 2", "x * 3"))                  # wrong answer
    _student(edition, submissions, "cyd", DEMO_NB.replace(SOLUTIONS[1], "        while True: pass"))  # never ends
    planted = submissions / "ada" / "nbs" / "planted.txt"  # eve's code writes into another student's folder
    _student(edition, submissions, "eve", DEMO_NB.replace(SOLUTIONS[0], f"    open({str(planted)!r}, 'w')\n{SOLUTIONS[0]}"))
    before, before_subs = _snapshot(demo_project), _snapshot(submissions)
    results = grade(project, submissions, ["01"], timeout=20, log=lambda *_: None)
    got = {r.student: r for r in results}
    assert (got["ada"].status, got["ada"].passed, got["ada"].failed, got["ada"].first_failure) == ("pass", 2, 0, "")
    assert (got["bob"].status, got["bob"].failed) == ("fail", 2)
    assert "assert" in got["bob"].first_failure.lower() or "Error" in got["bob"].first_failure
    assert got["cyd"].status == "timeout" and got["cyd"].first_failure == "killed after 20 s"
    assert got["eve"].status == "wrote outside its copy" and str(planted) in got["eve"].notes[0]
    with open(submissions / "grades.csv", newline="") as f: rows = list(csv.reader(f))
    assert rows[0] == ["student", "module", "status", "passed", "failed", "first failure"]
    assert [r[:5] for r in rows[1:]] == [["ada", "01_demo", "pass", "2", "0"], ["bob", "01_demo", "fail", "0", "2"],
                                         ["cyd", "01_demo", "timeout", "0", "0"],
                                         ["eve", "01_demo", "wrote outside its copy", "2", "0"]]
    md = (submissions / "grades.md").read_text().splitlines()
    assert md[0] == "| student | module | status | passed | failed | first failure |" and len(md) == 6
    # grading added the two tables (and eve her file); the instructor's project and the students' files are unchanged
    assert _snapshot(demo_project) == before
    after_subs = _snapshot(submissions)
    assert {p.name for p in after_subs.keys() - before_subs.keys()} == {"grades.csv", "grades.md", "planted.txt"}
    assert all(after_subs[p] == b for p, b in before_subs.items())
