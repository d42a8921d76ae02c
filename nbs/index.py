# %%
#| default_exp __init__

# %% [markdown]
# # TinyTorch
#
# > Build a machine-learning framework on NumPy, from tensors to transformers, one literate notebook at a time.

# %% [markdown]
# TinyTorch is a course in twenty notebooks. In each one you read a short explanation, write the code
# it describes, and run the tests under it, which tell you at once whether your code works.
# The notebooks export, with nbdev, into the importable package `tinytorch`, so what you build in one
# module is what the next module imports.
#
# The first part builds the framework: `Tensor`, activations, layers, losses, automatic
# differentiation, optimizers and a training loop. The second part adds data loading, convolution
# and normalization; the third, tokenization, attention and a small GPT. The last part is systems
# work on the models you built: profiling, acceleration, INT8 quantization, pruning, KV caching
# and a benchmark.
#
# Every number in the text is printed by a cell you can run. Where the text says "int8", the data is
# stored in one byte per element; where it says a result matches, a test checks it.

# %% [markdown]
# ## Modules
#
# | | module | package |
# |---|---|---|
# | 01 | Tensor | `tinytorch.core.tensor` |
# | 02 | Activations | `tinytorch.core.activations` |
# | 03 | Layers | `tinytorch.core.layers` |
# | 04 | Losses | `tinytorch.core.losses` |
# | 05 | Autograd | `tinytorch.core.autograd` |
# | 06 | Optimizers | `tinytorch.core.optimizers` |
# | 07 | Training | `tinytorch.core.training` |
#
# The remaining modules (data loading, convolution, normalization, text, attention, transformers, and the systems
# modules) are listed, with their status, by `tito status`.

# %% [markdown]
# ## Using the package
#
# ```python
# from tinytorch.core.tensor import Tensor
# x = Tensor([[1., 2.], [3., 4.]])
# (x @ x.T).sum(axis=1)
# ```

# %% [markdown]
# ## What `import tinytorch` does
#
# Importing any part of the package first runs `tinytorch/__init__.py`, which this cell writes. It imports the
# autograd module when the package has it, so that gradients are recorded whichever module a program imports
# first. (A student edition that does not yet contain autograd skips it.)

# %%
#| export
from importlib.util import find_spec as _find_spec

# %%
#| export
if _find_spec('tinytorch.core.autograd') is not None: import tinytorch.core.autograd
