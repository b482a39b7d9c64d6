"""Figures drawn from the package itself (matplotlib is imported inside the functions)."""
