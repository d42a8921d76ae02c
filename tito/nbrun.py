"""Run a notebook's cells as a test, the way `nbdev_test` does, in a child process."""
import subprocess
import sys
import time
from pathlib import Path

from .project import Project, subprocess_env

# Runs in the child. nbdev's `test_nb` is imported under another name so pytest never collects it.
_RUNNER = """
import sys
from pathlib import Path
from nbdev.test import test_nb as _nbdev_test_nb
ok, _ = _nbdev_test_nb(Path(sys.argv[1]), skip_flags=sys.argv[2].split(), basepath=sys.argv[3])
sys.exit(0 if ok else 1)
"""


def run_notebook(ipynb_path: Path,  # the notebook to execute
                 root: Path,        # project root: the child's cwd and first PYTHONPATH entry
                ) -> tuple[bool, float, str]:
    "Execute `ipynb_path` like `nbdev_test`, skipping cells flagged with `tst_flags`; return (ok, seconds, error text)."
    root = Path(root).resolve()
    ipynb_path = Path(ipynb_path).resolve()
    flags = " ".join(Project(root).tst_flags)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(ipynb_path), flags, str(root)],
                          cwd=root, env=subprocess_env(root), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    ok = proc.returncode == 0
    error = "" if ok else (proc.stderr.strip() or f"{ipynb_path.name}: exit code {proc.returncode}\n{proc.stdout}")
    return ok, seconds, error
