"""`tito`: status, export, test and release the TinyTorch modules, and run the milestones."""
import argparse
import ast
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .nbrun import run_notebook
from .project import (Module, Project, TitoError, cell_origin, exported_cells, last_line, run_nbdev_export,
                      subprocess_env)

# jupytext (and `tito.release`, which uses it) is imported inside the commands that need it: it imports
# nbformat and jsonschema, about 3 s here, and `tito test` or a mistyped command should not wait for that.

STATUS_HELP = """\
One row per planned module, run in order:
  notebook  yes: nbs/NN_name.py and its .ipynb exist and hold the same cells;
            stale: they differ (run `tito export`); no .ipynb; missing: no .py.
  exported  yes: exporting the .py source now (into a temp folder, with nbdev)
            gives the code in the package file, ignoring nbdev's `# %%` origin
            comments; stale: it differs (run `tito export`); missing: no package file.
  tests     pass/FAIL: the notebook run like `nbdev_test`, then the module's
            tests/test_NN_*.py with pytest; "-": no notebook.
Exits 0 if every present module's notebook is in sync, exported and passes; 1 otherwise."""

RELEASE_HELP = """\
Write a student project to DIR: the project's files, each module notebook with every
`### BEGIN SOLUTION` ... `### END SOLUTION` block replaced by `raise NotImplementedError("...")`,
outputs cleared, and tinytorch/ exported from those notebooks. DIR must be new, empty,
or a previous release (it holds a .tito-release file); it may not be inside nbs/ or tinytorch/."""

GRADE_HELP = """\
Grade a class. Each folder in SUBMISSIONS holding a settings.ini is one student's copy of the
student edition. For each student: copy it to a temporary folder, put in this project's tito/ and
the graded modules' tests, run `tito export` there, then each module's notebook and tests with
pytest in a child process killed after --timeout seconds. Writes grades.csv and grades.md (student,
module, status, passed, failed, first failure). Status: pass, fail, timeout, crashed, export failed,
no notebook, or "wrote outside its copy" (files changed in this project or in SUBMISSIONS meanwhile).
Neither this project nor the students' folders are modified. Not a sandbox: grade untrusted code in
a container. Exits 0 if every student passes every graded module, 1 otherwise."""

DOCS_HELP = """\
Build the docs site so that each page shows its notebook as it ran.
  1. copy milestone curves runs/NAME.png newer than nbs/images/milestones/NAME.png there (commit them);
  2. execute each notebook whose copy in _executed/ is missing or stale (the notebook tests
     leave fresh copies there, so after `pytest` nothing runs again);
  3. process the executed copies with nbdev into _proc/ and fix the API docs (source order,
     anchors that keep case where lowercase would collide, no links to undocumented names);
  4. check the pages (.ci/check_docs.py runs steps 2-4 in CI);
  5. `quarto render` into _docs/, if Quarto is installed; otherwise say so and exit 2."""


def pytest_cmd(*args: str) -> list[str]: return [sys.executable, "-m", "pytest", *args]


def notebook_state(mod: Module) -> str:
    "Whether the `.py` source and its paired `.ipynb` exist and hold the same cells."
    if not mod.present: return "missing"
    if not mod.ipynb.is_file(): return "no .ipynb"
    import jupytext
    cells = lambda p: [(c.cell_type, c.source) for c in jupytext.read(p).cells]
    return "yes" if cells(mod.py) == cells(mod.ipynb) else "stale"


def export_state(mod: Module) -> str:
    "'yes' if exporting the module's `.py` source now gives the code in the package, 'stale' if not, 'missing' if no file."
    if mod.lib_file is None: return "no target"  # no `#| default_exp` cell
    if not mod.lib_file.is_file(): return "missing"
    import jupytext
    from nbdev.export import nb_export
    lib, name = mod.project.lib, mod.ipynb.name
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / lib.name  # same package name: same relative imports
        # A copy of the package without this notebook's cells: cells a notebook exports into another
        # notebook's module (`#| export core.activations`) are appended to that file, which must exist.
        shutil.copytree(lib, fresh, ignore=shutil.ignore_patterns("__pycache__"))
        for f in fresh.rglob("*.py"):
            if exported_cells(f, name):
                f.write_text("".join(_without_cells(f.read_text(encoding="utf-8"), name)), encoding="utf-8")
        jupytext.write(jupytext.read(mod.py), Path(tmp) / name)
        nb_export(Path(tmp) / name, lib_path=fresh)
        # this notebook's cells, file by file (line numbers aside)
        code = lambda f: [c for _, c in exported_cells(f, name)]
        same = all(code(f) == code(lib / f.relative_to(fresh)) for f in fresh.rglob("*.py"))
        same = same and all(not code(f) or (fresh / f.relative_to(lib)).is_file() for f in lib.rglob("*.py"))
    return "yes" if same else "stale"


def _without_cells(text: str, notebook: str):
    "The lines of an exported file, minus the cells exported from `notebook`."
    keep = True
    for line in text.splitlines(keepends=True):
        if line.startswith("# %% "): keep = cell_origin(line) != notebook
        if keep: yield line


def module_tests(mod: Module) -> tuple[bool, float, str]:
    "Run the module's notebook, then its pytest files; return (ok, seconds, what failed)."
    root = mod.project.root
    if not mod.ipynb.is_file(): return False, 0.0, f"{mod.ipynb.relative_to(root)} is missing; run `tito export`"
    ok, seconds, error = run_notebook(mod.ipynb, root)
    if not ok: return False, seconds, f"notebook: {last_line(error)}"
    if not mod.test_files: return True, seconds, ""
    start = time.perf_counter()
    proc = subprocess.run(pytest_cmd("-q", *map(str, mod.test_files)), cwd=root, env=subprocess_env(root),
                          capture_output=True, text=True)
    seconds += time.perf_counter() - start
    return proc.returncode == 0, seconds, "" if proc.returncode == 0 else f"pytest: {last_line(proc.stdout)}"


def cmd_status(project: Project, args) -> int:
    row = "{:<3} {:<14} {:<9} {:<9} {:<5} {:>7}"
    print(row.format("NN", "module", "notebook", "exported", "tests", "time"), flush=True)
    failures = []
    for mod in project.modules():
        if not mod.present:
            print(row.format(mod.num, mod.name, "missing", "-", "-", "-"), flush=True)
            continue
        notebook, exported = notebook_state(mod), export_state(mod)
        ok, seconds, error = module_tests(mod)
        print(row.format(mod.num, mod.name, notebook, exported, "pass" if ok else "FAIL", f"{seconds:.1f}s"), flush=True)
        if notebook != "yes": failures.append(f"{mod.stem}: notebook is {notebook!r}; run `tito export`")
        if exported != "yes": failures.append(f"{mod.stem}: exported is {exported!r}; run `tito export`")
        if not ok: failures.append(f"{mod.stem}: {error}")
    for line in failures: print(line)
    return 1 if failures else 0


def cmd_export(project: Project, args) -> int:
    root, sources = project.root, project.notebooks()
    if not sources: raise TitoError(f"no notebooks to export in {project.nbs}")
    proc = subprocess.run([sys.executable, "-m", "jupytext", "--sync", *map(str, sources)], cwd=root,
                          env=subprocess_env(root), capture_output=True, text=True)
    if proc.returncode != 0: raise TitoError(f"jupytext --sync failed: {last_line(proc.stderr)}")
    for p in sources: print(f"synced {p.relative_to(root)} <-> {p.with_suffix('.ipynb').relative_to(root)}")
    run_nbdev_export(root)
    print(f"exported {project.nbs.relative_to(root)}/*.ipynb -> {project.lib.relative_to(root)}/")
    return 0


def cmd_test(project: Project, args) -> int:
    root, targets = project.root, []
    mods = [project.module(num) for num in args.modules] or [m for m in project.modules() if m.present]
    stale = [m.stem for m in mods if notebook_state(m) != "yes" or export_state(m) != "yes"]
    if stale:  # test what the notebook says, not the package's older code (a stub's NotImplementedError)
        print(f"tito test: {', '.join(stale)}: notebook and package differ (stale); running `tito export` first", flush=True)
        cmd_export(project, args)
    for mod in mods if args.modules else []:
        targets += [f"tests/test_notebooks.py::test_notebook[{mod.stem}]", *(str(p.relative_to(root)) for p in mod.test_files)]
    return subprocess.run(pytest_cmd(*(targets or ["tests"])), cwd=root, env=subprocess_env(root)).returncode


def cmd_release(project: Project, args) -> int:
    from .release import release
    out = Path(args.out) if args.out else project.root / "release" / "student"
    mods = release(project, out, args.modules)
    print(f"wrote the student edition of modules {' '.join(m.num for m in mods)} to {out}")
    return 0


def milestones(project: Project) -> dict[str, str]:
    "Milestone name -> the first line of its script's docstring, for every milestones/NAME.py."
    folder = project.root / "milestones"
    found = {}
    for path in sorted(folder.glob("[!_]*.py")) if folder.is_dir() else []:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        found[path.stem] = doc.split("\n")[0]
    return found


def cmd_milestone(project: Project, args) -> int:
    found = milestones(project)
    if not args.name:
        if not found: raise TitoError(f"no milestone scripts in {project.root / 'milestones'}")
        for name, doc in found.items(): print(f"{name:<16} {doc}")
        return 0
    if args.name not in found:
        raise TitoError(f"no milestone {args.name!r}; milestones are {', '.join(found) or 'none'}")
    script = project.root / "milestones" / f"{args.name}.py"
    return subprocess.run([sys.executable, str(script), *args.args], cwd=project.root, env=subprocess_env(project.root)).returncode


def cmd_grade(project: Project, args) -> int:
    from .grade import grade
    results = grade(project, Path(args.submissions), args.modules, args.timeout, Path(args.out) if args.out else None)
    return 0 if all(r.status == "pass" for r in results) else 1


def cmd_docs(project: Project, args) -> int:
    import shutil
    from .docs import build_pages, check_pages, quarto_render, refresh_milestone_images
    refresh_milestone_images(project)
    cache = build_pages(project)
    problems = check_pages(cache, project)
    for p in problems: print(f"tito docs: {p}")
    if problems: raise TitoError(f"{len(problems)} problems in the pages in {cache}; the site was not rendered")
    if args.no_render:
        print(f"pages ready for Quarto in {cache}")
        return 0
    if shutil.which("quarto") is None:
        raise TitoError(f"Quarto is not installed (https://quarto.org/docs/get-started/), so the site was not rendered; "
                        f"the pages are processed and checked in {cache}")
    print(f"rendered the site into {quarto_render(project, cache)}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tito", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("status", help="show each module's notebook, export and test state",
                       description=STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("export", help="jupytext --sync every notebook pair, then nbdev_export")
    s.set_defaults(func=cmd_export)
    s = sub.add_parser("test", help="run the named modules' notebook and pytest tests (default: all of tests/)")
    s.add_argument("modules", nargs="*", metavar="NN", help="module numbers, e.g. 01 3")
    s.set_defaults(func=cmd_test)
    s = sub.add_parser("release", help="write the student edition: solutions replaced by NotImplementedError stubs",
                       description=RELEASE_HELP)
    s.add_argument("--out", metavar="DIR", help="folder for the student project (default: release/student)")
    s.add_argument("modules", nargs="*", metavar="NN",
                   help="modules to release (default: every present module); the others' notebooks, tests and package files are left out")
    s.set_defaults(func=cmd_release)
    s = sub.add_parser("milestone", help="run a milestone script from milestones/ (without NAME: list them)")
    s.add_argument("name", nargs="?", metavar="NAME", help="the milestone, e.g. digits_cnn")
    s.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script, e.g. --epochs 3")
    s.set_defaults(func=cmd_milestone)
    s = sub.add_parser("grade", help="export and test every student's copy in SUBMISSIONS; write grades.csv and grades.md",
                       description=GRADE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("submissions", metavar="SUBMISSIONS", help="folder with one student project per subfolder")
    s.add_argument("--modules", nargs="+", metavar="NN", help="modules to grade (default: every present module)")
    s.add_argument("--timeout", type=float, default=300, metavar="S", help="seconds per module and student (default 300)")
    s.add_argument("--out", metavar="DIR", help="folder for grades.csv and grades.md (default: SUBMISSIONS)")
    s.set_defaults(func=cmd_grade)
    s = sub.add_parser("docs", help="build the docs site from executed notebooks (Quarto renders it when installed)",
                       description=DOCS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--no-render", action="store_true", help="stop before `quarto render`: process and check the pages only")
    s.set_defaults(func=cmd_docs)
    from .benchmark import add_parser as add_benchmark_parser  # `tito benchmark`: tito/benchmark.py
    add_benchmark_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(Project.find(), args)
    except TitoError as e:
        print(f"tito: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
