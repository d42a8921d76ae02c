"""Run a notebook's cells as a test, the way `nbdev_test` does, in a child process, and keep what it printed.

A notebook that passes is also written, with its outputs, to `_executed/NAME.ipynb` under the project root
(gitignored). The docs pages are built from these copies (`tito.docs`), so the site shows every printed figure,
table and plot without running the notebook a second time. Each copy records `source_key`: a hash of the
notebook's cells and of the package code it ran against; a copy whose key differs from the current one is stale.
"""
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from .project import Project, subprocess_env

EXECUTED = "_executed"  # folder under the project root for executed copies of the notebooks
META_KEY = "tinytorch"  # notebook metadata key of the executed copy: {"source_key": ..., "seconds": ...}

# Runs in the child: nbdev's `test_nb`, except that cells keep their `#|` directives (the docs need `#| hide`)
# and the executed notebook is written to argv[4] when every cell passed. nbdev's `test_nb` strips the
# directives from the cells it runs, so its notebook cannot be saved as a page.
_RUNNER = """
import json, os, sys, time
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.process import extract_directives
fn, flags, root, out, key = Path(sys.argv[1]), set(sys.argv[2].split()), sys.argv[3], sys.argv[4], sys.argv[5]
sys.path.insert(0, root)
os.environ["IN_TEST"] = "1"
nb = read_nb(fn)
def skip(cell):
    if cell.cell_type != "code": return True
    if "nbdev_export" + "(" in cell.source: return True
    d = extract_directives(cell, remove=False)
    return d.get("eval:", [""])[0].lower() == "false" or bool(flags & d.keys())
shell, start = CaptureShell(fn), time.perf_counter()
try:
    with working_directory(fn.parent): shell.run_all(nb, exc_stop=True, preproc=skip)
except BaseException:
    sys.stderr.write(shell.prettytb(fname=fn) + "\\n")
    sys.exit(1)
if out:
    nb.metadata["tinytorch"] = {"source_key": key, "seconds": round(time.perf_counter() - start, 2)}
    tmp = Path(out + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    write_nb(nb, tmp)
    os.replace(tmp, out)
"""


def _cells_text(ipynb_path: Path) -> str:
    "The notebook's cell types and sources, the part of an .ipynb that decides what running it prints."
    nb = json.loads(Path(ipynb_path).read_text(encoding="utf-8"))
    return json.dumps([(c["cell_type"], "".join(c["source"])) for c in nb["cells"]])


def package_key(project: Project) -> str:
    "A hash of the package's Python files (not nbdev's `_modidx.py`): what every notebook imports."
    h = hashlib.sha256()
    for p in sorted(project.lib.rglob("*.py")):
        if p.name == "_modidx.py" or "__pycache__" in p.parts: continue
        h.update(p.relative_to(project.root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def source_key(ipynb_path: Path, project: Project, pkg: str | None = None) -> str:
    "What an executed copy of `ipynb_path` must record to be fresh: its cells and the package, hashed."
    h = hashlib.sha256(_cells_text(ipynb_path).encode())
    h.update((pkg or package_key(project)).encode())
    return h.hexdigest()[:16]


def executed_path(ipynb_path: Path, project: Project) -> Path:
    "Where the executed copy of `ipynb_path` goes: `_executed/NAME.ipynb` under the project root."
    return project.root / EXECUTED / Path(ipynb_path).name


def run_notebook(ipynb_path: Path,  # the notebook to execute
                 root: Path,        # project root: the child's cwd and first PYTHONPATH entry
                 save: bool = True, # write the executed notebook to `_executed/` when it passes
                ) -> tuple[bool, float, str]:
    "Execute `ipynb_path` like `nbdev_test`, skipping cells flagged with `tst_flags`; return (ok, seconds, error text)."
    root = Path(root).resolve()
    ipynb_path = Path(ipynb_path).resolve()
    project = Project(root)
    flags = " ".join(project.tst_flags)
    out = executed_path(ipynb_path, project)
    key = source_key(ipynb_path, project) if save else ""
    if save: out.unlink(missing_ok=True)  # a failed or interrupted run leaves no copy that looks fresh
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(ipynb_path), flags, str(root), str(out) if save else "", key],
                          cwd=root, env=subprocess_env(root), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    ok = proc.returncode == 0
    error = "" if ok else (proc.stderr.strip() or f"{ipynb_path.name}: exit code {proc.returncode}\n{proc.stdout}")
    return ok, seconds, error
