"""The student edition: every solution block becomes `raise NotImplementedError("...")`.

An exercise body sits inside an `#| export` cell between a line `### BEGIN SOLUTION` and a line
`### END SOLUTION`. `student_source` and `student_notebook` are pure functions on text and cells;
`release` writes a whole student project that a learner can `pip install -e .` and work in.
"""
import ast
import copy
import re
import shutil
from pathlib import Path

import jupytext

from .project import Module, Project, TitoError, run_nbdev_export

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
MARKER_FILE = ".tito-release"  # marks a folder `release` may overwrite
FALLBACK = "implement this exercise"
_MARKERISH = re.compile(r"^\s*#+\s*(BEGIN|END)\s+SOLUTION\b", re.IGNORECASE)  # also catches typos of the markers
_EXPORT = re.compile(r"^\s*#\s*\|\s*export[is]?\b", re.MULTILINE)
_SKIP_NAMES = {".git", ".venv", "_proc", "_docs", "_executed", "__pycache__", ".pytest_cache", ".hypothesis",
               ".ipynb_checkpoints"}
_INSTRUCTOR_ONLY = {".ci", ".github"}  # CI and site publishing: they run the full edition's checks
_MODULE_FILE = re.compile(r"^(\d\d)_\w+\.(py|ipynb)$")


class ReleaseError(TitoError):
    "Solution markers that cannot be released: unbalanced, nested, malformed or outside an `#| export` cell."


def has_markers(source: str) -> bool:
    "Whether any line of `source` looks like a solution marker (well-formed or not)."
    return any(_MARKERISH.match(line) for line in source.split("\n"))


def is_export_cell(source: str) -> bool:
    "Whether the cell carries an nbdev `#| export` (or `exporti`, `exports`) directive."
    return bool(_EXPORT.search(source))


def _functions(tree: ast.AST):
    "Yield (class name or None, function node) for every function in `tree`."
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield (node.name if isinstance(node, ast.ClassDef) else None), child


def exercise_message(source: str,  # the cell's code, markers included
                     lineno: int,  # 1-based line of the `### BEGIN SOLUTION` marker
                    ) -> str:
    "What the student implements: the enclosing function's name and the first paragraph of its docstring."
    line = source.split("\n")[lineno - 1]
    indent = len(line) - len(line.lstrip())
    try: tree = ast.parse(source)
    except SyntaxError: return FALLBACK
    # the nearest `def` above the marker and less indented than it
    above = [(cls, fn) for cls, fn in _functions(tree) if fn.lineno < lineno and fn.col_offset < indent]
    if not above: return FALLBACK
    cls, fn = max(above, key=lambda o: o[1].lineno)
    args = fn.args.posonlyargs + fn.args.args
    if cls is None and args and args[0].arg == "self" and args[0].annotation is not None:
        cls = ast.unparse(args[0].annotation)  # a `@patch`ed method: `def reshape(self: Tensor, ...)`
    name = f"{cls}.{fn.name}" if cls else fn.name
    doc = " ".join((ast.get_docstring(fn) or "").strip().split("\n\n")[0].split())  # its first paragraph
    return f"{name}: {doc}" if doc else f"implement {name}"


def _quote(text: str) -> str:
    "`text` as a double-quoted Python string literal."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def student_source(source: str,         # one `#| export` cell's code
                   where: str = "cell",  # names the cell in error messages
                  ) -> str:
    "Replace each solution block (markers included) with `raise NotImplementedError(...)` at the marker's indentation."
    lines = source.split("\n")
    out, begin = [], None  # begin: 0-based line of the open `### BEGIN SOLUTION`
    for i, line in enumerate(lines):
        if _MARKERISH.match(line) and line.strip() not in (BEGIN, END):
            raise ReleaseError(f"{where}, line {i + 1}: malformed solution marker {line.strip()!r}; "
                               f"write {BEGIN!r} or {END!r} alone on the line")
        if line.strip() == BEGIN:
            if begin is not None:
                raise ReleaseError(f"{where}, line {i + 1}: nested {BEGIN!r}; the block opened on line {begin + 1} is not closed")
            begin = i
        elif line.strip() == END:
            if begin is None:
                raise ReleaseError(f"{where}, line {i + 1}: {END!r} without a {BEGIN!r} before it")
            indent = lines[begin][:len(lines[begin]) - len(lines[begin].lstrip())]
            out.append(f"{indent}raise NotImplementedError({_quote(exercise_message(source, begin + 1))})")
            begin = None
        elif begin is None:
            out.append(line)
    if begin is not None:
        raise ReleaseError(f"{where}, line {begin + 1}: {BEGIN!r} without an {END!r} after it")
    return "\n".join(out)


def student_notebook(nb,                     # a notebook (nbformat node), e.g. from `jupytext.read`
                     name: str = "notebook",  # names the notebook in error messages
                     solutions: bool = False, # keep the solutions (the full edition, built the same way)
                    ):
    "A copy of `nb` with solution blocks stubbed out, outputs and execution counts cleared."
    nb = copy.deepcopy(nb)
    for n, cell in enumerate(nb.cells, 1):
        if cell.cell_type == "markdown": continue  # prose may mention the markers
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if not has_markers(cell.source): continue
        where = f"{name}: cell {n}"
        if not is_export_cell(cell.source):
            raise ReleaseError(f"{where}: solution markers outside an `#| export` cell")
        stub = student_source(cell.source, where)  # validates the markers in both editions
        if not solutions: cell.source = stub
    return nb


def _check_out(project: Project, out: Path) -> Path:
    "The resolved `out`, or a `TitoError` if writing there could damage the project or unrelated files."
    out, root = Path(out).resolve(), project.root
    for folder in (project.nbs, project.lib):
        if out == folder or folder in out.parents:
            raise TitoError(f"--out {out} is inside {folder}; choose a folder outside the notebooks and the package")
    if out == root or out in root.parents:
        raise TitoError(f"--out {out} would contain the project {root}; choose a new folder")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER_FILE).is_file())):
        raise TitoError(f"--out {out} exists and is not a previous release (no {MARKER_FILE} in it); "
                        "choose a new folder or remove it")
    return out


def _is_generated(path: Path) -> bool:
    "Whether nbdev wrote `path` (a module or `_modidx.py`); `release` regenerates those from the student notebooks."
    with open(path, encoding="utf-8") as f: first = f.readline()
    return first.startswith(("# AUTOGENERATED! DO NOT EDIT!", "# Autogenerated by nbdev"))


def _ignore(project: Project, out: Path, keep: set[str]):
    "A `shutil.copytree` ignore function: what the student project leaves out or rewrites."
    def ignore(folder: str, names: list[str]) -> set[str]:
        folder = Path(folder)
        skip = {n for n in names if n in _SKIP_NAMES or n.endswith(".egg-info") or folder / n == out}
        if folder == project.root: skip |= {"release"} | (_INSTRUCTOR_ONLY & set(names))
        if folder == project.nbs:  # module notebooks and the index are written by `release`
            skip |= {n for n in names if _MODULE_FILE.match(n) or n in ("index.py", "index.ipynb")}
        if folder == project.tests:
            skip |= {n for n in names if (m := re.match(r"^test_(\d\d)_", n)) and m[1] not in keep}
        if folder == project.lib or project.lib in folder.parents:
            skip |= {n for n in names if n.endswith(".py") and _is_generated(folder / n)}
        return skip
    return ignore


STUDENT_README = """\
# {title}: student edition

{description}

This is the student edition: in every module notebook, the body of each exercise is replaced by
`raise NotImplementedError("...")`, whose message says what to implement (what the function receives
and returns). The tests stay, right under each exercise. Your work is to replace each stub.

## Start

On a machine with Python 3.11 or newer and pip, from the root of this folder:

```bash
python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/tito status
```

`tito status` shows one row per module. Its tests column says FAIL for every module you have not done
yet, and the command then exits with code 1: that is expected. A module reads `pass` once its notebook
and its tests pass.

## Working on a module

1. Open the module's notebook in Jupyter: `.venv/bin/jupyter lab nbs/{first}.ipynb`. Edit the
   `.ipynb` file. The `.py` file next to it (`nbs/{first}.py`) holds the same cells as text; it is
   the notebook's paired source, and `tito export` syncs the two (the one saved last wins).
2. Replace each `raise NotImplementedError(...)` with your code and run the cells under it: they are
   the tests, and a cell that finishes silently has passed.
3. `.venv/bin/tito export` writes your code into the package `tinytorch/`, where the next modules import
   it.
4. `.venv/bin/tito test {num}` runs the module's notebook and its tests under `tests/` (it runs `tito export`
   first if the notebook and the package differ).

Activate the environment (`source .venv/bin/activate`) to type `tito` and `jupyter` without the path.

## Modules in this edition

{modules}

## Layout

```
nbs/        the module notebooks (*.ipynb, which you edit) and their paired sources (*.py)
tinytorch/  the package, written by `tito export` from the notebooks; not edited by hand
tests/      the tests `tito test NN` runs for each module
tito/       the command-line tool
```
"""


def _title(py: Path) -> tuple[str, str]:
    "A notebook's `# Title` and `> summary` lines, from its Jupytext source."
    lines = py.read_text(encoding="utf-8").splitlines()
    title = next((l[4:] for l in lines if l.startswith("# # ")), py.stem)
    return title, next((l[4:] for l in lines if l.startswith("# > ")), "")


def student_readme(project: Project, mods: list[Module]) -> str:
    "The student edition's README.md: what the edition is, how to start, which file to edit, its modules."
    rows = ["| | module | what it builds |", "|---|---|---|"]
    rows += [f"| {m.num} | {t} (`nbs/{m.stem}.ipynb`) | {d} |" for m in mods for t, d in [_title(m.py)]]
    return STUDENT_README.format(title=project.cfg.get("title", "TinyTorch"),
                                 description=project.cfg.get("description", ""), modules="\n".join(rows),
                                 first=mods[0].stem, num=mods[0].num)


def release(project: Project,                # the full project
            out: Path,                       # folder for the student project
            nums: list[str] | None = None,   # module numbers to release; default: every present module
            solutions: bool = False,         # keep the solutions: the full edition, built the same way
           ) -> list[Module]:
    "Write the student edition of `project` to `out` and export its package; return the released modules."
    out = _check_out(project, out)
    mods = list({m.num: m for m in map(project.module, nums)}.values()) if nums else [m for m in project.modules() if m.present]
    if not mods: raise TitoError(f"no module notebooks in {project.nbs}")
    sources = [m.py for m in mods] + [p for p in [project.nbs / "index.py"] if p.is_file()]
    # transform every notebook before writing anything, so a marker error leaves `out` untouched
    editions = {p.stem: student_notebook(jupytext.read(p), str(p.relative_to(project.root)), solutions) for p in sources}
    if out.exists(): shutil.rmtree(out)
    shutil.copytree(project.root, out, ignore=_ignore(project, out, {m.num for m in mods}))
    nbs = out / project.nbs.relative_to(project.root)
    nbs.mkdir(parents=True, exist_ok=True)
    for stem, nb in editions.items():
        jupytext.write(nb, nbs / f"{stem}.ipynb")
        jupytext.write(nb, nbs / f"{stem}.py", fmt="py:percent")  # written last, so `jupytext --sync` takes it as the source
    if not solutions: (out / "README.md").write_text(student_readme(project, mods), encoding="utf-8")
    edition = "full edition (solutions kept)" if solutions else "student edition"
    (out / MARKER_FILE).write_text(f"{edition} written by `tito release` from {project.root}\n"
                                   f"modules: {' '.join(m.num for m in mods)}\n"
                                   "`tito release` overwrites this folder.\n", encoding="utf-8")
    run_nbdev_export(out)
    return mods
