"""The accuracy-vs-parameters plot of the transfer benchmark: label placement and the file it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from vimtune.viz.accuracy_params import labels_below, plot_accuracy_vs_params


def test_a_label_moves_below_when_a_slightly_higher_point_is_close() -> None:
    coords = [(2.0e5, 77.2), (2.35e5, 78.0), (1.5e4, 73.6), (1.6e4, 70.9), (1.0e3, 77.5), (1.0e6, 60.0)]
    # svp-inner-only under svp, vpt-deep under bias; far apart on x, or far below, stays above
    assert labels_below(coords) == [True, False, False, True, False, False]
    assert labels_below([(1e4, 70.0), (1.1e4, 75.0)]) == [False, False]  # 5 points apart: no clash
    assert labels_below([(1e4, 70.0), (1.1e4, 70.0)]) == [False, False]  # same height: side by side


def test_plot_writes_a_png_and_refuses_an_empty_list(tmp_path: Path) -> None:
    out = plot_accuracy_vs_params([("svp", 2e5, 0.78), ("full", 1.6e6, 0.84)], tmp_path / "sub" / "plot.png",
                                  title="t", per_task={"a": [(2e5, 0.7), (1.6e6, 0.8)]})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_accuracy_vs_params([], tmp_path / "empty.png")
