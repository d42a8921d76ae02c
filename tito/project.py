"""Find the project root, its settings and its modules (`nbs/NN_name.py` notebooks)."""
import os
import re
import subprocess
import sys
from configparser import ConfigParser
from dataclasses import dataclass
from pathlib import Path

# The planned curriculum: module number -> name. `tito status` shows one row per entry.
PLANNED = {
    "00": "timing",
    "01": "tensor", "02": "activations", "03": "layers", "04": "losses", "05": "autograd",
    "06": "optimizers", "07": "training", "08": "dataloader", "09": "spatial", "10": "normalization",
    "11": "tokenization", "12": "embeddings", "13": "attention", "14": "transformers", "15": "profiling",
    "16": "acceleration", "17": "quantization", "18": "compression", "19": "caching", "20": "benchmarking",
}
_MODULE_RE = re.compile(r"^(\d\d)_(\w+)\.py$")
_DEFAULT_EXP_RE = re.compile(r"^#\s*\|\s*default_exp\s+(\S+)", re.MULTILINE)


class TitoError(Exception):
    "A user mistake: the CLI prints it as one line and exits non-zero, without a traceback."


def find_root(start: Path | None = None) -> Path:
    "The first folder holding `settings.ini`, walking up from `start` (default: the current directory)."
    start = Path(start or Path.cwd()).resolve()
    for folder in [start, *start.parents]:
        if (folder / "settings.ini").is_file():
            return folder
    raise TitoError(f"no settings.ini in {start} or any parent folder; run tito inside the project")


def subprocess_env(root: Path) -> dict[str, str]:
    "Environment for a child process: `root` first on PYTHONPATH, and no `IN_TEST` (it turns `nbdev_export` into a no-op)."
    env = {k: v for k, v in os.environ.items() if k != "IN_TEST"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    return env


@dataclass
class Module:
    "One curriculum module: the notebook `nbs/{num}_{name}.py`, its paired `.ipynb`, its export target and its tests."
    project: "Project"
    num: str   # two digits, "01"
    name: str  # "tensor"

    @property
    def stem(self) -> str: return f"{self.num}_{self.name}"
    @property
    def py(self) -> Path: return self.project.nbs / f"{self.stem}.py"
    @property
    def ipynb(self) -> Path: return self.project.nbs / f"{self.stem}.ipynb"
    @property
    def present(self) -> bool: return self.py.is_file()

    @property
    def default_exp(self) -> str | None:
        "The dotted module name in the notebook's `#| default_exp` cell, e.g. `core.tensor`."
        if not self.present: return None
        m = _DEFAULT_EXP_RE.search(self.py.read_text(encoding="utf-8"))
        return m.group(1) if m else None

    @property
    def lib_file(self) -> Path | None:
        "The package file that `nbdev_export` writes, e.g. `tinytorch/core/tensor.py`."
        exp = self.default_exp
        return self.project.lib.joinpath(*exp.split(".")).with_suffix(".py") if exp else None

    @property
    def test_files(self) -> list[Path]:
        "The module's own pytest files, `tests/test_{num}_*.py`."
        return sorted(self.project.tests.glob(f"test_{self.num}_*.py"))


class Project:
    "An nbdev project: `settings.ini` at `root`, notebooks in `nbs_path`, the package in `lib_path`."
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        cfg = ConfigParser(delimiters=["="])
        cfg.read(self.root / "settings.ini", encoding="utf-8")
        self.cfg = cfg["DEFAULT"]
        self.nbs = self.root / self.cfg.get("nbs_path", "nbs")
        self.lib = self.root / self.cfg.get("lib_path", self.cfg.get("lib_name", "tinytorch"))
        self.tests = self.root / "tests"
        self.tst_flags = self.cfg.get("tst_flags", "").split()

    @classmethod
    def find(cls, start: Path | None = None) -> "Project": return cls(find_root(start))

    def modules(self) -> list[Module]:
        "Every planned module, plus any `nbs/NN_name.py` not in the plan, sorted by number."
        found = {m[1]: m[2] for p in self.nbs.glob("*.py") if (m := _MODULE_RE.match(p.name))}
        names = PLANNED | found  # a notebook on disk names its module
        return [Module(self, num, names[num]) for num in sorted(names)]

    def module(self, num: str) -> Module:
        "The module numbered `num` (`1` or `01`); a `TitoError` if it is not planned or its notebook is missing."
        mods = {m.num: m for m in self.modules()}
        key = num.zfill(2)
        if key not in mods:
            raise TitoError(f"no module {num}; modules are {min(mods)}-{max(mods)}")
        mod = mods[key]
        if not mod.present:
            raise TitoError(f"module {key} ({mod.name}) has no notebook yet: {mod.py.relative_to(self.root)} is missing")
        return mod

    def notebooks(self) -> list[Path]:
        "The Jupytext sources `tito export` syncs: every present module's `.py`, and `nbs/index.py` if present."
        index = self.nbs / "index.py"
        return [m.py for m in self.modules() if m.present] + ([index] if index.is_file() else [])


def run_nbdev_export(root: Path) -> str:
    "Run `nbdev_export` in `root` in a child process (without `IN_TEST`); return its output, a `TitoError` if it fails."
    code = "from nbdev.doclinks import nbdev_export; nbdev_export()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=subprocess_env(root), capture_output=True, text=True)
    if proc.returncode != 0:
        raise TitoError(f"nbdev_export failed in {root} (exit code {proc.returncode}): {last_line(proc.stderr)}")
    return proc.stdout + proc.stderr


def last_line(text: str) -> str:
    "The last non-blank line of `text`: the exception line of a traceback."
    lines = [l for l in text.splitlines() if l.strip()]
    return lines[-1] if lines else "no output"


def cell_origin(line: str) -> str | None:
    "The notebook (`03_layers.ipynb`) named by nbdev's origin comment `# %% ../nbs/03_layers.ipynb #id`, else None."
    parts = line.split() if line.startswith("# %% ") else []
    return Path(parts[2]).name if len(parts) > 2 else None


def exported_cells(path: Path, notebook: str | None = None) -> list[tuple[int, str]]:
    """(first line, code) of each cell of the package file `path` that nbdev exported from the notebook named
    `notebook` (`03_layers.ipynb`; None: from any notebook), found by nbdev's origin comments
    (`# %% ../nbs/03_layers.ipynb #id`). A notebook may export cells into another notebook's module
    (`#| export core.activations`)."""
    cells, current = [], None
    if not path.is_file(): return cells
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("# %% "):
            origin = cell_origin(line)
            current = [] if origin is not None and notebook in (None, origin) else None
            if current is not None: cells.append((i + 1, current))
        elif current is not None: current.append(line)
    return [(first, "\n".join(lines).strip()) for first, lines in cells]
