"""Plots of benchmark results (matplotlib, Agg backend: no display needed)."""

from vimtune.viz.accuracy_params import plot_accuracy_vs_params

__all__ = ["plot_accuracy_vs_params"]
