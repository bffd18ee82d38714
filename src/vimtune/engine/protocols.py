"""Model-selection protocols: which epoch's weights a reported test number comes from.

* ``val`` -- the epoch with the best validation top-1 (per-epoch evaluation on
  ``data.val_split``), tested once. The honest protocol.
* ``last`` -- the weights after the last epoch.
* ``best-test`` -- the epoch with the best *test* top-1 (``train.test_every_epoch``), as the SVP
  release reports; it selects on the test set, so it is optimistic and comes with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vimtune.choices import PROTOCOLS
from vimtune.engine.checkpoint import read_weights_metadata
from vimtune.engine.run_dir import RunFiles

BEST_TEST_WARNING = (
    "WARNING: protocol 'best-test' selects the epoch with the best TEST accuracy (as the SVP release "
    "does): the number is optimistic, not a held-out estimate; prefer protocol 'val'"
)
_WEIGHTS = {"val": "best_val", "last": "last", "best-test": "best_test"}
_NEEDS = {"val": ("val_top1", "data.val_split"), "best-test": ("test_top1", "train.test_every_epoch=true")}


@dataclass(frozen=True)
class Selection:
    """The weights a protocol picks: file, epoch (1-based) and a warning to print, if any."""

    protocol: str
    weights: Path
    epoch: int
    warning: str | None = None


def available_protocols(history: list[dict[str, Any]]) -> list[str]:
    """The protocols a run's per-epoch records support (``last`` always, once an epoch is done)."""
    if not history:
        return []
    return [p for p in PROTOCOLS if p not in _NEEDS or any(_NEEDS[p][0] in r for r in history)]


def select(files: RunFiles, history: list[dict[str, Any]], protocol: str) -> Selection:
    """The weights file of ``protocol`` in run folder ``files``.

    Raises:
        ValueError: unknown protocol, or one the run cannot support (the message says why).
        FileNotFoundError: the weights file is missing (e.g. the run has not finished).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if protocol not in available_protocols(history):
        key, setting = _NEEDS.get(protocol, ("", ""))
        reason = f"the run has no per-epoch '{key}' (it needs {setting})" if key else "no epoch has finished"
        raise ValueError(f"protocol {protocol!r} is not available for '{files.root}': {reason}")
    weights = files.weights(_WEIGHTS[protocol])
    if not weights.is_file():
        raise FileNotFoundError(
            f"weights for protocol {protocol!r} not found: '{weights}' (has the run finished? "
            "resume it with --resume)"
        )
    epoch = int(read_weights_metadata(weights).get("epoch", history[-1]["epoch"]))
    return Selection(protocol, weights, epoch, BEST_TEST_WARNING if protocol == "best-test" else None)
