"""The docs pipeline: executed copies of the notebooks, the page checks, and the API docs fixes (order, anchors, links)."""
import json

from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from conftest import DEMO_NB, pair_and_export, write_project
from tito.docs import (assign_anchors, auto_id, build_pages, check_links, check_page, check_pages, check_source,
                       doc_entries, fix_api_pages, is_fresh, site_base)
from tito.nbrun import META_KEY, executed_path, run_notebook
from tito.project import Project

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()"
PNG = {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}


def _nb(*cells, executed=True) -> dict:
    nb = new_notebook(cells=list(cells))
    if executed: nb.metadata[META_KEY] = {"source_key": "k"}
    return json.loads(json.dumps(nb))


def test_check_fails_when_a_plotting_notebook_has_no_image():
    source = _nb(new_code_cell(PLOT), executed=False)
    no_image = _nb(new_code_cell(PLOT, outputs=[new_output("stream", name="stdout", text="")]))
    problems = check_page("plot.ipynb", no_image, source, "k")
    assert problems == ["plot.ipynb: the notebook plots (plt./matplotlib) but its page has no image output"]
    with_image = _nb(new_code_cell(PLOT, outputs=[new_output("display_data", data=PNG)]))
    assert check_page("plot.ipynb", with_image, source, "k") == []


def test_check_fails_on_missing_prints_errors_and_unexecuted_or_stale_pages():
    src = "x = 2\nprint(f'{x = }')"
    source = _nb(new_code_cell(src), executed=False)
    assert check_page("p.ipynb", _nb(new_code_cell(src)), source, "k") == [
        "p.ipynb: a cell that prints shows no output: 'x = 2'"]
    printed = new_code_cell(src, outputs=[new_output("stream", name="stdout", text="x = 2\n")])
    assert check_page("p.ipynb", _nb(printed), source, "k") == []
    assert check_page("p.ipynb", _nb(printed), source, "other key") == [
        "p.ipynb: the page was built from a stale run (its cells or the package changed since)"]
    assert check_page("p.ipynb", _nb(printed, executed=False), source) == [
        "p.ipynb: the page was not built from an executed notebook (no outputs)"]
    # a print inside a function body need not print; an error output is always a problem
    quiet = new_code_cell("def f():\n    print(1)")
    err = new_code_cell("1/0", outputs=[new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                                                   traceback=[])])
    assert check_page("p.ipynb", _nb(quiet, err), source, "k") == [
        "p.ipynb: error output ZeroDivisionError: division by zero"]


def test_check_source_flags_wide_lines_and_a_summary_nbdev_would_cut(tmp_path):
    py = tmp_path / "01_demo.py"
    py.write_text("# %% [markdown]\n# # Demo\n#\n# > One line that says what the module builds.\n\n"
                  "# %%\nx = 1\n", encoding="utf-8")
    assert check_source(py) == []
    py.write_text("# %% [markdown]\n# # Demo\n#\n# > A summary that goes on\n# > over two lines.\n\n"
                  f"# %%\nx = {'1 + ' * 30}1\ny = {'2 + ' * 30}2\n", encoding="utf-8")
    assert check_source(py) == [
        "01_demo.py: 2 lines wider than 100 characters (lines 8, 9)",
        "01_demo.py:5: the summary continues on a second '> ' line, which nbdev drops from the page's "
        "description; keep it to one line"]
    py.write_text("# %% [markdown]\n# The product is `x * x\n# * x`, two multiplications.\n#\n"
                  "# Steps:\n#\n# 1. first\n#    and more\n# 2. second\n#\n# $$\n# a\n# + b\n# $$\n# $$y = a\n# + b.$$\n",
                  encoding="utf-8")
    assert check_source(py) == ["01_demo.py:3: a wrapped line starts with a list marker ('* x`, two mu'); "
                                "Jupyter shows it as a list item: rewrap the paragraph"]


def _doc(name: str, line: int, file: str = "tinytorch/core/demo.py", body: str = "") -> dict:
    md = (f"---\n\n[source](https://github.com/x/y/blob/main/{file}#L{line})\n\n### {name}\n\n"
          f"```python\n\ndef {name.split('.')[-1]}(\n    x\n):\n\n\n```\n\n*{body}*")
    return new_code_cell(f"#| echo: false\n#| output: asis\nshow_doc({name})",
                         outputs=[new_output("display_data", data={"text/markdown": md, "text/plain": ""})])


def test_anchors_keep_case_only_where_lowercase_collides():
    assert assign_anchors(["Conv2d", "conv2d", "Flatten"], ["arguments-and-output-size"]) == {
        "Conv2d": "Conv2d", "conv2d": "conv2d", "Flatten": "flatten"}
    assert assign_anchors(["Linear"], ["linear"]) == {"Linear": "Linear"}  # a section heading `## Linear`
    assert auto_id("The [`Conv2d`](x.html#conv2d) layer") == "the-conv2d-layer"


def test_fix_api_pages_sorts_anchors_and_relinks(demo_project):
    project = Project(demo_project)
    base = site_base(project)
    cache = demo_project / "_proc"
    cache.mkdir()
    prose = new_markdown_cell(f"[`_pair`]({base}demo.html#_pair) checks; [`Conv2d`]({base}demo.html#conv2d) "
                              f"wraps [`conv2d`]({base}demo.html#conv2d); [`Conv2d.forward`]({base}demo.html#conv2d.forward)")
    page = _nb(prose, _doc("Conv2d", 30), _doc("zeros", 20), _doc("conv2d", 10))  # nbdev's reverse order
    (cache / "01_demo.ipynb").write_text(json.dumps(page))
    broken = check_links(cache, project)
    assert f"01_demo.ipynb: link `conv2d` lands on the docs of Conv2d ({base}demo.html#conv2d)" in broken
    assert f"01_demo.ipynb: link to a missing anchor: {base}demo.html#_pair" in broken
    assert any("out of source order" in p for p in check_page("01_demo.ipynb", page, page))
    fix_api_pages(cache, project)
    fixed = json.loads((cache / "01_demo.ipynb").read_text())
    assert [(n, l) for n, _, l in doc_entries(fixed)] == [("conv2d", 10), ("zeros", 20), ("Conv2d", 30)]
    assert "".join(fixed["cells"][0]["source"]) == (
        f"`_pair` checks; [`Conv2d`]({base}demo.html#Conv2d) wraps [`conv2d`]({base}demo.html#conv2d); "
        f"[`Conv2d.forward`]({base}demo.html#Conv2d)")
    assert "### Conv2d {#Conv2d}" in "".join(fixed["cells"][-1]["outputs"][0]["data"]["text/markdown"])
    assert check_links(cache, project) == []
    assert not [p for p in check_page("01_demo.ipynb", fixed, fixed) if "order" in p]


def test_notebook_run_keeps_outputs_and_pages_show_them(tmp_path, tito_on_path):
    nb = DEMO_NB + ("\n# %%\nprint(f'double of 21 is {double(21)}')\n\n# %%\nimport matplotlib.pyplot as plt\n\n"
                    "# %%\nplt.plot([1, 2]); plt.show()\n")
    root = write_project(tmp_path / "p", nb)
    pair_and_export(root)
    project = Project(root)
    ipynb = root / "nbs" / "01_demo.ipynb"
    assert not is_fresh(ipynb, project)
    ok, _, error = run_notebook(ipynb, root)
    assert ok, error
    assert is_fresh(ipynb, project)
    executed = json.loads(executed_path(ipynb, project).read_text())
    outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
    assert any("double of 21 is 42" in "".join(o.get("text", "")) for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("#| notest" in "".join(c["source"]) for c in executed["cells"])  # directives kept for the docs
    cache = build_pages(project, log=lambda *_: None)
    assert check_pages(cache, project, log=lambda *_: None) == []
    page = json.loads((cache / "01_demo.ipynb").read_text())
    assert not any("#|" in "".join(c["source"]) for c in page["cells"] if c["cell_type"] == "code"
                   and "show_doc" not in "".join(c["source"]))  # directives are nbdev's to remove
    # the package changed: the copy is stale and the page check says so
    (root / "tinytorch" / "core" / "demo.py").write_text((root / "tinytorch" / "core" / "demo.py").read_text() + "\n")
    assert not is_fresh(ipynb, project)
    assert any("stale run" in p for p in check_pages(cache, project, log=lambda *_: None))
