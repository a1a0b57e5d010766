"""Numba kernels. They take arrays and scalars only, validate nothing, and never raise on user input.

Modules: ``_jit`` (the compile flags), ``activations``, ``bf16`` (bfloat16 weight storage), ``forward``,
``backward``, ``step`` (one step, for cells and streams), ``optim`` and ``dispatch`` (array-level
drivers that pick a serial or parallel variant).
"""
