"""Triton kernels, one op per file: the @triton.jit kernel, its launcher, its support rules."""
