"""Numba kernels. They take arrays and scalars only, validate nothing, and never raise on user input.

Modules: ``_jit`` (the compile flags), ``activations``, ``forward``, ``backward``, ``optim``
and ``dispatch`` (array-level drivers that pick a serial or parallel variant).
"""
