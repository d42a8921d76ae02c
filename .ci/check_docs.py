"""Check the docs site up to Quarto's input.

Quarto cannot be installed on our machines, so this runs `tito docs` without its last step (`quarto render`):
it builds every page from the executed notebook the test run left in `_executed/` (executing only a notebook
whose copy is missing or stale), processes it with nbdev into `_proc/`, fixes the API docs (source order,
anchors, links), and then fails loudly on what a reader would miss: a page without outputs, an error output,
a notebook that plots with no image on its page, a cell that prints with nothing under it, an exported name
without API docs, API docs out of source order, a link to a missing page or anchor, a link that lands on
another name's docs. nbdev silently processes nothing when the repository path contains a folder whose name
starts with a dot; that is caught too (no processed page).
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's tito, even if not installed

from tito.docs import build_pages, check_pages, ensure_executed, pages  # noqa: E402
from tito.project import Project, TitoError  # noqa: E402


def main() -> int:
    project = Project(Path(__file__).resolve().parents[1])
    start = time.perf_counter()
    try:
        ran = ensure_executed(project, pages(project))
        cache = build_pages(project)
    except TitoError as e:
        print(f"check_docs: {e}", file=sys.stderr)
        return 1
    problems = check_pages(cache, project)
    for p in problems: print(f"check_docs: {p}", file=sys.stderr)
    took = time.perf_counter() - start
    if problems:
        print(f"check_docs: {len(problems)} problems in {cache} ({took:.1f}s)", file=sys.stderr)
        return 1
    reused = len(pages(project)) - len(ran)
    print(f"check_docs: {len(pages(project))} pages ready for Quarto in {cache}: {reused} from the test run's "
          f"executed notebooks, {len(ran)} executed now; {took:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
