"""Grade a class: every student's copy of the student edition, exported and tested in isolation.

`grade(project, submissions)` treats each folder in `submissions` as one student's project (a copy of the
student edition, `tito release`, with their notebooks filled in). For each student it copies the folder into
a fresh temporary workspace, replaces its `tito/` and the graded modules' tests with the instructor's (so a
student cannot change how they are graded), exports the student's notebooks there (`tito export`), and runs
each module's notebook and `tests/test_NN_*.py` with pytest in a child process under a time limit. The
student's folder and the instructor's project are only read.

What it catches: a module that runs past the time limit (the child's whole process group is killed), an
interpreter that dies (no test report), and files created or changed in the instructor's project or in
the submissions folder while a student's code ran. It is not a sandbox: code that means harm can still write
elsewhere on the machine, so grade untrusted work in a container or as a user without write access.
"""
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .project import Project, TitoError, last_line, subprocess_env

_COPY_SKIP = {".git", ".venv", "_proc", "_docs", "_executed", "__pycache__", ".pytest_cache", ".hypothesis",
              ".ipynb_checkpoints", "release", "runs"}
_SNAPSHOT_SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".ipynb_checkpoints"}


@dataclass
class Result:
    "One student's result on one module."
    student: str
    module: str        # "01_tensor"
    status: str        # pass, fail, timeout, crashed, wrote outside its copy, export failed, no notebook
    passed: int = 0
    failed: int = 0
    first_failure: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    "Path -> (size, mtime in ns) of every file under `folders`, skipping virtual envs, git and caches."
    snap = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if d not in _SNAPSHOT_SKIP]
            for f in filenames:
                p = os.path.join(dirpath, f)
                try: st = os.stat(p)
                except OSError: continue
                snap[p] = (st.st_size, st.st_mtime_ns)
    return snap


def _changed(before: dict, after: dict) -> list[str]:
    "Files created, changed or deleted between two snapshots."
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int | None, str]:
    "Run `cmd` in its own process group; on timeout kill the whole group. Return (exit code or None, output)."
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out or ""


def _junit(path: Path) -> tuple[int, int, str]:
    "(passed, failed, first failure's message) from a pytest JUnit XML report."
    passed = failed = 0
    first = ""
    for case in ET.parse(path).getroot().iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if case.find("skipped") is not None: continue
        if bad is None: passed += 1; continue
        failed += 1
        if not first:
            text = (bad.get("message") or "") + "\n" + (bad.text or "")
            first = f"{case.get('name')}: {last_line(text)}"
    return passed, failed, first


def _workspace(project: Project, student: Path, tmp: Path, tests: list[Path]) -> Path:
    "A copy of the student's project in `tmp`, with the instructor's `tito/` and the graded modules' tests."
    ws = tmp / student.name
    shutil.copytree(student, ws, ignore=lambda d, names: {n for n in names if n in _COPY_SKIP or n.endswith(".egg-info")},
                    symlinks=True)
    shutil.rmtree(ws / "tito", ignore_errors=True)
    shutil.copytree(Path(__file__).parent, ws / "tito", ignore=shutil.ignore_patterns("__pycache__"))
    (ws / "tests").mkdir(exist_ok=True)
    for t in tests: shutil.copy2(t, ws / "tests" / t.name)
    return ws


def grade_student(project: Project, student: Path, nums: list[str], tmp: Path, timeout: float,
                  watch: list[Path]) -> list[Result]:
    "Export and test one student's copy; one `Result` per module in `nums`."
    mods = [project.module(n) for n in nums]
    shared = [project.tests / n for n in ("conftest.py", "test_notebooks.py") if (project.tests / n).is_file()]
    ws = _workspace(project, student, tmp, shared + [f for m in mods for f in m.test_files])
    env = subprocess_env(ws)
    home = tmp / f"{student.name}-home"
    home.mkdir()
    env.update(HOME=str(home), TMPDIR=str(home), MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    before = _snapshot(*watch)
    code, out = _run([sys.executable, "-m", "tito.cli", "export"], ws, env, timeout)
    if code != 0:
        why = "timed out" if code is None else last_line(out)
        return [Result(student.name, m.stem, "export failed", first_failure=why) for m in mods]
    results = []
    for mod in mods:
        if not (ws / "nbs" / f"{mod.stem}.ipynb").is_file():
            results.append(Result(student.name, mod.stem, "no notebook")); continue
        report = tmp / f"{student.name}-{mod.stem}.xml"
        targets = [f"tests/test_notebooks.py::test_notebook[{mod.stem}]", *(f"tests/{f.name}" for f in mod.test_files)]
        start = time.perf_counter()
        code, out = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *targets],
                         ws, env, timeout)
        r = Result(student.name, mod.stem, "", seconds=time.perf_counter() - start)
        if report.is_file(): r.passed, r.failed, r.first_failure = _junit(report)
        if code is None:
            r.status, r.first_failure = "timeout", f"killed after {timeout:g} s"
        elif not report.is_file() or code not in (0, 1):
            r.status = "crashed"
            r.first_failure = r.first_failure or f"the test process ended with exit code {code}: {last_line(out)}"
        else:
            r.status = "pass" if code == 0 and r.failed == 0 else "fail"
        results.append(r)
    outside = _changed(before, _snapshot(*watch))
    if outside:
        for r in results:
            r.status = "wrote outside its copy"
            r.notes.append(f"changed {len(outside)} files outside its copy, e.g. {outside[0]}")
    return results


def students(submissions: Path) -> list[Path]:
    "Every folder in `submissions` that holds a project (a `settings.ini`), sorted by name."
    return sorted(p for p in submissions.iterdir() if p.is_dir() and (p / "settings.ini").is_file())


def write_tables(results: list[Result], out: Path) -> tuple[Path, Path]:
    "Write `grades.csv` and `grades.md` into `out`: one row per student and module."
    out.mkdir(parents=True, exist_ok=True)
    cols = ["student", "module", "status", "passed", "failed", "first failure"]
    rows = [[r.student, r.module, r.status, r.passed, r.failed, "; ".join([r.first_failure, *r.notes]).strip("; ")]
            for r in results]
    csv_path, md_path = out / "grades.csv", out / "grades.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return csv_path, md_path


def grade(project: Project, submissions: Path, nums: list[str] | None = None, timeout: float = 300,
          out: Path | None = None, log=print) -> list[Result]:
    "Grade every student folder in `submissions` on modules `nums` (default: every present module); write the tables."
    submissions = Path(submissions).resolve()
    if not submissions.is_dir(): raise TitoError(f"{submissions} is not a folder of students' projects")
    if submissions == project.root or project.root in submissions.parents:
        raise TitoError(f"{submissions} is inside the project {project.root}; keep submissions outside it")
    class_ = students(submissions)
    if not class_: raise TitoError(f"no student projects (folders with a settings.ini) in {submissions}")
    nums = [project.module(n).num for n in nums] if nums else [m.num for m in project.modules() if m.present]
    out = Path(out).resolve() if out else submissions
    results = []
    with tempfile.TemporaryDirectory(prefix="tito-grade-") as tmp:
        for student in class_:
            got = grade_student(project, student, nums, Path(tmp), timeout, [project.root, submissions])
            for r in got:
                log(f"{r.student:<16} {r.module:<18} {r.status:<12} {r.passed:>3} passed {r.failed:>3} failed"
                    + (f"  {r.first_failure[:80]}" if r.first_failure else ""))
            results += got
    csv_path, md_path = write_tables(results, out)
    log(f"wrote {csv_path} and {md_path}")
    return results
