"""Ablation grids: a base recipe, named variants per axis, cells sharing their common stage prefixes, each cell
evaluated under log-likelihood and generation, and a report that flags rank reversals (docs/ablate.md)."""

from gendistill.ablate.grid import Cell, Grid, GridConfig, load_grid

__all__ = ["Cell", "Grid", "GridConfig", "load_grid"]
