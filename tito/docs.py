"""The docs site: executed pages, API docs that read in source order with working links, and the checks CI runs.

`nbdev_docs` is nbdev's page processing (`proc_nbs`) followed by `quarto render`. It processes the committed
notebooks, which carry no outputs, so its pages would show no printed figure and no plot. `build_pages` runs the
same steps on the executed copies that the notebook tests leave in `_executed/` (see `tito.nbrun`), executing only
the notebooks whose copy is missing or stale, and then `fix_api_pages` repairs three things nbdev does to API docs:

- one exported cell that defines several names gets their docs in reverse order (`add_show_docs` inserts each
  `show_doc` cell right after the exported cell, so the last one inserted comes first): we sort by source line;
- nbdev links every backticked name in its symbol index, private helpers (`_pair`) and class-body methods
  (`Conv2d.forward`) too, which have no docs: the link goes to the class's docs, or is removed;
- anchors are the lowercased name, so `Conv2d` and `conv2d` on one page share `#conv2d`: such names get
  anchors that keep their case, and every link is rewritten to match.

`check_pages` checks the result; `.ci/check_docs.py` and `tito docs` run it.
"""
import ast
import json
import os
import re
import shutil
from pathlib import Path

from .nbrun import EXECUTED, META_KEY, executed_path, package_key, run_notebook, source_key
from .project import Project, TitoError, exported_cells

IMAGE_TYPES = ("image/png", "image/svg+xml", "image/jpeg")
_SOURCE_LINK = re.compile(r"\[source\]\([^)]*/([\w/]+\.py)#L(\d+)\)")
_DOC_HEADING = re.compile(r"^### (\S+?)( \{#[^}]*\})?$", re.MULTILINE)
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*$", re.MULTILINE)
_PLOTS = re.compile(r"\bplt\.\w+\(|\bmatplotlib\b")


# Executed copies

def pages(project: Project) -> list[Path]:
    "The notebooks nbdev turns into pages: `nbs/*.ipynb` whose name does not start with `_` or `.`."
    return sorted(p for p in project.nbs.glob("*.ipynb") if not p.name.startswith(("_", ".")))


def is_fresh(ipynb: Path, project: Project, pkg: str | None = None) -> bool:
    "Whether `_executed/` holds a copy of `ipynb` run on its current cells and the current package."
    copy = executed_path(ipynb, project)
    if not copy.is_file(): return False
    meta = json.loads(copy.read_text(encoding="utf-8")).get("metadata", {}).get(META_KEY, {})
    return meta.get("source_key") == source_key(ipynb, project, pkg)


def ensure_executed(project: Project, notebooks: list[Path], log=print) -> list[str]:
    "Execute every notebook whose executed copy is missing or stale; return their names. A failing notebook is an error."
    pkg, ran = package_key(project), []
    for nb in notebooks:
        if is_fresh(nb, project, pkg): continue
        ok, seconds, error = run_notebook(nb, project.root)
        if not ok: raise TitoError(f"{nb.name} failed, so its page cannot be built: {error.strip().splitlines()[-1]}")
        log(f"executed {nb.relative_to(project.root)} in {seconds:.1f}s (no fresh copy in {EXECUTED}/)")
        ran.append(nb.name)
    return ran


# Processing: nbdev's `_pre_docs` without its Quarto download, on the executed copies

def build_pages(project: Project, log=print) -> Path:
    "Execute what is missing or stale, then write every page into nbdev's `_proc/` and fix its API docs; return `_proc`."
    from execnb.nbio import read_nb, write_nb
    import nbdev.doclinks
    from nbdev.quarto import nbdev_sidebar, refresh_quarto_yml
    from nbdev.serve import proc_nbs
    from nbdev.processors import FilterDefaults
    notebooks = pages(project)
    if not notebooks: raise TitoError(f"no notebooks in {project.nbs}")
    ensure_executed(project, notebooks, log)
    cwd = Path.cwd()
    os.chdir(project.root)  # nbdev finds settings.ini from the working directory
    try:
        refresh_quarto_yml()
        nbdev.doclinks._build_modidx()
        nbdev_sidebar.__wrapped__(file_glob=None, file_re=r"\.(?:ipynb|qmd)$")  # the .qmd pages too
        # everything but the notebooks (and their Jupytext sources): _quarto.yml, styles, .qmd pages, images
        cache = proc_nbs(force=True, n_workers=0, skip_file_re=r"^[_.]|\.(?:ipynb|py)$")
        os.environ["IN_TEST"] = "1"  # as nbdev's own page worker sets it
        try:
            for nb_path in notebooks:
                nb = read_nb(executed_path(nb_path, project))
                FilterDefaults()(nb)
                write_nb(nb, cache / nb_path.name)
        finally: del os.environ["IN_TEST"]
    finally: os.chdir(cwd)
    fix_api_pages(cache, project)
    return cache


# API docs: order, anchors, links

def _page_html(name: str) -> str:
    "The page nbdev links to for notebook `name`: `09_spatial.ipynb` -> `spatial.html` (nbdev's `_nbpath2html`)."
    return re.sub(r"^\d+[a-zA-Z0-9]*_", "", name.lower()).rsplit(".", 1)[0] + ".html"


def site_base(project: Project) -> str:
    "The docs site's address with a trailing slash, as nbdev writes it into links."
    return project.cfg.get("doc_host", "").rstrip("/") + "/" + project.cfg.get("doc_baseurl", "").strip("/") + "/"


def auto_id(heading: str) -> str:
    "Pandoc's identifier for a heading without an explicit one: lowercase, punctuation but `_-.` removed, spaces to `-`."
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\s.-]", "", text.lower()).strip()
    text = re.sub(r"\s+", "-", text)
    return re.sub(r"^[^a-z]+", "", text) or "section"


def _md(cell) -> list[str]:
    "The markdown texts of a cell: its source if markdown, else its `text/markdown` outputs."
    if cell["cell_type"] == "markdown": return ["".join(cell["source"])]
    return ["".join(o.get("data", {}).get("text/markdown", "")) for o in cell.get("outputs", [])
            if "text/markdown" in o.get("data", {})]


def _is_doc(cell) -> bool: return cell["cell_type"] == "code" and "show_doc(" in "".join(cell["source"])


def doc_entries(page: dict) -> list[tuple[str, str | None, int | None]]:
    "(name, source file, source line) of every API doc on a page, in page order."
    out = []
    for cell in page["cells"]:
        if not _is_doc(cell): continue
        for md in _md(cell):
            h, src = _DOC_HEADING.search(md), _SOURCE_LINK.search(md)
            if h: out.append((h[1], src[1] if src else None, int(src[2]) if src else None))
    return out


def _sort_docs(page: dict):
    "Put every run of consecutive API doc cells in source-line order (nbdev inserts one cell's docs in reverse)."
    cells, i = page["cells"], 0
    while i < len(cells):
        j = i
        while j < len(cells) and _is_doc(cells[j]): j += 1
        if j - i > 1:
            keys = [_SOURCE_LINK.search("".join(_md(c)[0]) if _md(c) else "") for c in cells[i:j]]
            if all(keys) and len({k[1] for k in keys}) == 1:
                cells[i:j] = [c for _, c in sorted(zip([int(k[2]) for k in keys], cells[i:j]), key=lambda t: t[0])]
        i = max(j, i + 1)


def _headings(page: dict) -> list[tuple[str, str]]:
    "(id, text) of every markdown heading on a page that is not an API doc, with Pandoc's automatic ids."
    out = []
    for cell in page["cells"]:
        if cell["cell_type"] != "markdown": continue
        in_fence = False
        for line in "".join(cell["source"]).splitlines():
            if line.startswith("```"): in_fence = not in_fence
            m = None if in_fence else _MD_HEADING.match(line)
            if m:
                explicit = re.search(r"\{#([^}\s]+)[^}]*\}\s*$", m[2])
                out.append((explicit[1] if explicit else auto_id(m[2]), m[2]))
    return out


def assign_anchors(names: list[str], taken: list[str]) -> dict[str, str]:
    "An anchor per documented name: nbdev's lowercase one, or the exact name where lowercase would be shared."
    lowers = [n.lower() for n in names] + [t.lower() for t in taken]
    anchors = {}
    for n in names:
        a = n.lower() if lowers.count(n.lower()) == 1 else n
        while a in anchors.values() or a in taken: a += "-api"
        anchors[n] = a
    return anchors


def _classes(project: Project) -> set[str]:
    "Names of the classes defined at the top of the package's modules."
    out = set()
    for p in project.lib.rglob("*.py"):
        if p.name.startswith("_modidx"): continue
        out |= {n.name for n in ast.parse(p.read_text(encoding="utf-8")).body if isinstance(n, ast.ClassDef)}
    return out


_API_LINK = r"\[`([^`]+?)(\(\))?`\]\({base}([\w-]+\.html)#([^)\s]+)\)"


def fix_api_pages(cache: Path, project: Project):
    "Sort API docs into source order, give them anchors that do not collide, and point every API link at one."
    files = sorted(cache.glob("*.ipynb"))
    loaded = {f.name: json.loads(f.read_text(encoding="utf-8")) for f in files}
    classes, anchors = _classes(project), {}
    for name, page in loaded.items():
        _sort_docs(page)
        docs = [n for n, _, _ in doc_entries(page)]
        anchors[_page_html(name)] = assign_anchors(docs, [i for i, _ in _headings(page)])
    link = re.compile(_API_LINK.format(base=re.escape(site_base(project))))

    def relink(m):
        text, call, html, frag = m[1], m[2] or "", m[3], m[4]
        parts = text.split(".")
        name = next((".".join(parts[k:]) for k in range(len(parts)) if ".".join(parts[k:]).lower() == frag), None)
        page = anchors.get(html, {})
        if name in page: return f"[`{text}{call}`]({site_base(project)}{html}#{page[name]})"
        owner, _, member = (name or "").rpartition(".")
        if owner in page and not (member.startswith("_") and not member.startswith("__")):
            return f"[`{text}{call}`]({site_base(project)}{html}#{page[owner]})"  # a class-body method: its class
        return f"`{text}{call}`"  # a private helper or an undocumented name: no link

    for name, page in loaded.items():
        mine = anchors[_page_html(name)]
        for cell in page["cells"]:
            if cell["cell_type"] == "markdown":
                cell["source"] = link.sub(relink, "".join(cell["source"]))
                continue
            for o in cell.get("outputs", []):
                md = o.get("data", {}).get("text/markdown")
                if md is None: continue
                md = link.sub(relink, "".join(md))
                if _is_doc(cell):
                    md = _DOC_HEADING.sub(lambda h: f"### {h[1]} {{#{mine.get(h[1], h[1].lower())}}}", md)
                    h = _DOC_HEADING.search(md)
                    if h and h[1] in classes: md = md.replace(f"\ndef {h[1]}(", f"\nclass {h[1]}(", 1)
                o["data"]["text/markdown"] = md
        (cache / name).write_text(json.dumps(page, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# Checks

def _code_cells(nb: dict) -> list[dict]: return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _prints(source: str) -> bool:
    "Whether a cell calls `print` outside any function or class body (so running it must print)."
    try: tree = ast.parse(source)
    except SyntaxError: return False
    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)): continue
            if isinstance(child, ast.Call) and getattr(child.func, "id", None) == "print": return True
            if walk(child): return True
        return False
    return walk(tree)


def check_page(name: str, page: dict, source: dict, expected_key: str | None = None) -> list[str]:
    "Problems of one processed page against its source notebook: not executed, errors, missing plots or prints, order."
    problems = []
    meta = page.get("metadata", {}).get(META_KEY)
    if not meta: problems.append(f"{name}: the page was not built from an executed notebook (no outputs)")
    elif expected_key and meta.get("source_key") != expected_key:
        problems.append(f"{name}: the page was built from a stale run (its cells or the package changed since)")
    outputs = [o for c in _code_cells(page) for o in c.get("outputs", [])]
    for o in outputs:
        if o.get("output_type") == "error":
            problems.append(f"{name}: error output {o.get('ename')}: {o.get('evalue')}")
    src = "\n".join("".join(c["source"]) for c in _code_cells(source))
    if _PLOTS.search(src) and not any(t in o.get("data", {}) for o in outputs for t in IMAGE_TYPES):
        problems.append(f"{name}: the notebook plots (plt./matplotlib) but its page has no image output")
    for n, cell in enumerate(_code_cells(page)):
        if _is_doc(cell) or not _prints("".join(cell["source"])): continue
        if not any(o.get("output_type") == "stream" and o.get("name") == "stdout" for o in cell.get("outputs", [])):
            first = "".join(cell["source"]).strip().splitlines()[0][:60]
            problems.append(f"{name}: a cell that prints shows no output: {first!r}")
    lines = {}
    for doc, file, line in doc_entries(page):
        if file and line is not None:
            if line < lines.get(file, (0, ""))[0]:
                problems.append(f"{name}: API docs out of source order: {doc} ({file}:{line}) "
                                f"after {lines[file][1]} ({file}:{lines[file][0]})")
            lines[file] = (line, doc)
    return problems


_ANY_LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)\)")


def check_links(cache: Path, project: Project) -> list[str]:
    "Dead links and anchors across the processed pages, duplicate ids, and API links that land on another name."
    base, problems = site_base(project), []
    loaded = {f.name: json.loads(f.read_text(encoding="utf-8")) for f in sorted(cache.glob("*.ipynb"))}
    ids, doc_ids = {}, {}
    for name, page in loaded.items():
        heads = [i for i, _ in _headings(page)]
        docs, all_ids = {}, list(heads)
        for cell in page["cells"]:
            if not _is_doc(cell): continue
            for md in _md(cell):
                for m in _DOC_HEADING.finditer(md):
                    if m[2]: i = m[2][3:-1]  # explicit: ` {#id}`
                    else:  # Pandoc's automatic id, numbered when taken
                        i = base_id = auto_id(m[1])
                        while i in all_ids: i = f"{base_id}-{int(i.rpartition('-')[2]) + 1 if i != base_id else 1}"
                    docs[i] = m[1]
                    all_ids.append(i)
        dup = sorted({i for i in all_ids if all_ids.count(i) > 1})
        if dup: problems.append(f"{name}: ids used twice on the page: {dup}")
        ids[_page_html(name)] = set(all_ids)
        doc_ids[_page_html(name)] = docs
    texts = [(name, md) for name, page in loaded.items() for cell in page["cells"] for md in _md(cell)]
    texts += [(q.name, q.read_text(encoding="utf-8")) for q in sorted(cache.glob("*.qmd"))]
    for name, md in texts:
        for m in _ANY_LINK.finditer(md):
            image, text, url = m[1], m[2], m[3]
            if url.startswith(base): target = url[len(base):]
            elif re.match(r"^[a-z]+:", url) or url.startswith("#"): continue
            else:  # a relative link or image: a file Quarto renders or copies
                path = url.split("#")[0]
                if not (cache / path).exists(): problems.append(f"{name}: {'image' if image else 'link'} to missing {path}")
                continue
            html, _, frag = target.partition("#")
            if html not in ids: problems.append(f"{name}: link to a page that does not exist: {url}"); continue
            if frag and frag not in ids[html]: problems.append(f"{name}: link to a missing anchor: {url}"); continue
            sym = re.fullmatch(r"`([^`]+?)(?:\(\))?`", text)
            if sym and frag in doc_ids[html]:
                lands, want = doc_ids[html][frag], sym[1]
                if not (want == lands or want.endswith("." + lands) or want.rpartition(".")[0].endswith(lands)):
                    problems.append(f"{name}: link `{want}` lands on the docs of {lands} ({url})")
    return problems


def exported_names(module_file: Path, notebook: str | None = None) -> list[str]:
    """The functions and classes in a generated module's `__all__` (nbdev documents those, not assigned names);
    with `notebook`, only those defined in cells exported from that notebook (`03_layers.ipynb`)."""
    body = ast.parse(module_file.read_text(encoding="utf-8")).body
    defs = [n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    if notebook is not None:
        starts = [first for first, _ in exported_cells(module_file, notebook)]
        origins = sorted(first for first, _ in exported_cells(module_file))
        mine = lambda line: max((o for o in origins if o <= line), default=None) in starts
        defs = [n for n in defs if mine(n.lineno)]
    defined = {n.name for n in defs}
    for node in body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return [n for n in ast.literal_eval(node.value) if n in defined]
    return []


_LIST_ITEM = re.compile(r"^(?:[-*+]|\d+[.)])\s")
WIDTH = 100  # characters: a line wider than this scrolls sideways on the site and in Jupyter


def check_source(py: Path) -> list[str]:
    "Problems of a notebook's Jupytext source: lines wider than WIDTH, a summary that nbdev would cut."
    lines, problems = py.read_text(encoding="utf-8").splitlines(), []
    wide = [n for n, line in enumerate(lines, 1) if len(line) > WIDTH]
    if wide:
        shown = ", ".join(map(str, wide[:8])) + (", ..." if len(wide) > 8 else "")
        problems.append(f"{py.name}: {len(wide)} lines wider than {WIDTH} characters (lines {shown})")
    # a wrapped line that starts with "- ", "* " or "1. " right under a paragraph line: Jupyter (CommonMark)
    # renders it as a list item and Quarto (Pandoc) as text, and neither as the sentence it was
    markdown, fenced, prev = False, False, ""
    for n, line in enumerate(lines, 1):
        if line.startswith("# %%"):
            markdown, fenced, prev = "[markdown]" in line, False, ""
            continue
        body = line[2:] if line.startswith("# ") else ""
        if not markdown: continue
        if body.lstrip().startswith("```") or body.count("$$") % 2:  # a code fence or display math
            fenced = not fenced
        elif (not fenced and _LIST_ITEM.match(body) and prev.strip() and not _LIST_ITEM.match(prev)
              and not prev.startswith((" ", "|", "#", ">"))):
            problems.append(f"{py.name}:{n}: a wrapped line starts with a list marker ({body[:12]!r}); "
                            f"Jupyter shows it as a list item: rewrap the paragraph")
        prev = body
    # nbdev makes the first `> ` line of the title cell the page's description and drops the rest
    for n, line in enumerate(lines[:-1], 1):
        if line.startswith("# > ") and lines[n].startswith("# > "):
            problems.append(f"{py.name}:{n + 1}: the summary continues on a second '> ' line, which nbdev "
                            f"drops from the page's description; keep it to one line")
            break
    return problems


def check_pages(cache: Path, project: Project, log=print) -> list[str]:
    "Every check on the processed pages: one page per notebook, executed and fresh, API docs complete, links sound."
    problems, pkg = [], package_key(project)
    for nb_path in pages(project):
        proc = cache / nb_path.name
        if not proc.is_file(): problems.append(f"{nb_path.name}: no processed page"); continue
        page, source = json.loads(proc.read_text(encoding="utf-8")), json.loads(nb_path.read_text(encoding="utf-8"))
        found = check_page(nb_path.name, page, source, source_key(nb_path, project, pkg))
        py = nb_path.with_suffix(".py")
        if py.is_file(): found += check_source(py)
        exp = [l.split()[-1] for c in source["cells"] for l in "".join(c["source"]).splitlines()
               if l.startswith("#| default_exp")]
        documented = {n for n, _, _ in doc_entries(page)}
        if exp and exp[0] != "__init__":
            module = project.lib / (exp[0].replace(".", "/") + ".py")
            if not exported_names(module, nb_path.name):
                found.append(f"{nb_path.name}: {module} exports nothing (empty __all__)")
            # every name this notebook exports, also into another notebook's module (`#| export core.x`)
            names = [n for f in sorted(project.lib.rglob("*.py")) for n in exported_names(f, nb_path.name)]
            missing = [n for n in names if n not in documented]
            if missing: found.append(f"{nb_path.name}: no API docs rendered for {missing}")
        images = sum(any(t in o.get("data", {}) for t in IMAGE_TYPES) for c in _code_cells(page) for o in c.get("outputs", []))
        prints = sum(o.get("output_type") == "stream" for c in _code_cells(page) for o in c.get("outputs", []))
        log(f"{nb_path.name}: {'ok' if not found else 'PROBLEMS'}: {prints} printed outputs, {images} images, "
            f"{len(documented)} API docs")
        problems += found
    return problems + check_links(cache, project)


# Milestone images

def refresh_milestone_images(project: Project, log=print) -> list[Path]:
    "Copy each `runs/NAME.png` that a milestone run wrote to `nbs/images/milestones/` when it is newer; return the copies."
    runs, dest, scripts = project.root / "runs", project.nbs / "images" / "milestones", project.root / "milestones"
    copied = []
    for script in sorted(scripts.glob("[!_]*.py")) if scripts.is_dir() else []:
        png, out = runs / f"{script.stem}.png", dest / f"{script.stem}.png"
        if png.is_file() and (not out.is_file() or png.stat().st_mtime > out.stat().st_mtime):
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(png, out)
            log(f"copied {png.relative_to(project.root)} -> {out.relative_to(project.root)} (commit it)")
            copied.append(out)
    return copied


def quarto_render(project: Project, cache: Path) -> Path:
    "Render `_proc/` with Quarto and move the site to `doc_path` (`_docs/`), as `nbdev_docs` does."
    import subprocess
    proc = subprocess.run(["quarto", "render", "--no-cache"], cwd=cache)
    if proc.returncode != 0: raise TitoError(f"quarto render failed in {cache} (exit code {proc.returncode})")
    doc_path = project.root / project.cfg.get("doc_path", "_docs")
    shutil.rmtree(doc_path, ignore_errors=True)
    shutil.move(str(cache / doc_path.name), str(doc_path))
    return doc_path
