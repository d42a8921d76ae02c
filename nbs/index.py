# %%
#| default_exp __init__

# %% [markdown]
# # TinyTorch
#
# > Build a machine-learning framework on NumPy, from tensors to transformers, module by module.

# %% [markdown]
# TinyTorch is a course in twenty modules, numbered 01 to 20, after module 00, which sets up the one
# timing protocol every measurement uses. Each module is a notebook: you read a short explanation,
# write the code it describes, and run the tests under it, which tell you at once whether your code
# works. The notebooks export, with nbdev, into the importable package `tinytorch`, so what you
# build in one module is what the next module imports.
#
# The first part builds the framework: `Tensor`, activations, layers, losses, automatic
# differentiation, optimizers and a training loop. The second part adds data loading, convolution
# and normalization; the third, tokenization, attention and a small GPT. The last part is systems
# work on the models you built: profiling, acceleration, INT8 quantization, pruning, KV caching and
# a benchmark.
#
# Every number in the text is printed by a cell you can run, and these pages show each notebook as
# it ran: the printed figures, tables and plots sit under the cells that made them. Where the text
# says "int8", the data is stored in one byte per element; where it says a result matches, a test
# checks it.

# %% [markdown]
# ## Who it is for
#
# You know Python and have used NumPy arrays; you have met matrix products and derivatives. You may
# have trained a model with PyTorch and want to know what happens inside `loss.backward()` and
# `optimizer.step()`, or you teach a course on machine-learning systems and want material whose
# claims a student can check by running it.

# %% [markdown]
# ## How to start
#
# On a machine with Python 3.11 or newer and pip, from the root of a copy of the repository (the
# student edition if you are taking the course), install and see where every module stands:
#
# ```bash
# python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/tito status
# ```
#
# Install and run the whole test suite:
#
# ```bash
# python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python -m pytest
# ```
#
# Then open a module's notebook in Jupyter (`.venv/bin/jupyter lab nbs/01_tensor.ipynb`), fill in
# each `raise NotImplementedError(...)` stub, and run the cells under it: they are the tests. `tito
# export` writes your code into the package, and `tito test 01` runs the module's notebook and its
# tests.

# %% [markdown]
# ## Modules
#
# The table is made when this page is built, from the notebooks present: each row links to the
# module's page and gives the summary line under its title. A module without a notebook yet is
# marked "not written yet".

# %%
#| hide
from IPython.display import Markdown
from tito.project import Project

# %%
#| echo: false
#| output: asis
def _title_and_summary(py):
    "The notebook's `# Title` and its `> summary` line, from the Jupytext source."
    lines = py.read_text(encoding="utf-8").splitlines()
    title = next((l[4:] for l in lines if l.startswith("# # ")), py.stem)
    summary = next((l[4:] for l in lines if l.startswith("# > ")), "")
    return title, summary


rows = ["| | module | what it builds |", "|---|---|---|"]
for mod in Project.find().modules():
    if mod.present:
        title, summary = _title_and_summary(mod.py)
        rows.append(f"| {mod.num} | [{title}]({mod.stem}.ipynb) | {summary} |")
    else:
        rows.append(f"| {mod.num} | {mod.name.capitalize()} (not written yet) | |")
Markdown("\n".join(rows))

# %% [markdown]
# The [milestones](milestones.qmd) page gives the results of the models trained with the framework,
# with their learning curves. The [instructors' page](instructors.qmd) covers the student edition,
# grading a class, and publishing this site.

# %% [markdown]
# ## What `import tinytorch` does
#
# Importing any part of the package first runs `tinytorch/__init__.py`, made of the two cells below.
# They import the autograd module when the package has it, so that gradients are recorded whichever
# module a program imports first. (A student edition that does not yet contain autograd skips it.)

# %%
#| exports
from importlib.util import find_spec as _find_spec

# %%
#| exports
if _find_spec('tinytorch.core.autograd') is not None: import tinytorch.core.autograd

# %% [markdown]
# ## Using the package
#
# ```python
# from tinytorch.core.tensor import Tensor
# x = Tensor([[1., 2.], [3., 4.]])
# (x @ x.T).sum(axis=1)
# ```
