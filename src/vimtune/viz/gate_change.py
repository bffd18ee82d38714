"""How much a method moves the selective gate along the sequence: the numbers behind ``gates.png``.

The SVP paper's argument: prefix prompts (VPT) change the scan's gates ``delta`` near the prompts and less and
less further along the sequence, token-wise prompts (SVP) everywhere. :func:`gate_change` measures it as the mean
``|delta_tuned - delta_plain|`` over layers and the patch tokens of the first and of the last quarter of the
sequence; :func:`gate_table` puts several methods' numbers into one markdown table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vimtune.engine.checkpoint import atomic_write_text


@dataclass(frozen=True)
class GateChange:
    """A method's mean absolute gate change against the plain backbone, by sequence quarter.

    Attributes:
        method: the method's name.
        first_quarter: mean ``|change|`` over layers and the first ``M // 4`` patch tokens (sequence order).
        last_quarter: the same over the last ``M // 4`` patch tokens.
        plain_mean: the plain backbone's mean gate over all layers and patch tokens (the scale of the change).
        layers, tokens, images: what the means run over (L layers, M patch tokens, and the images averaged).
    """

    method: str
    first_quarter: float
    last_quarter: float
    plain_mean: float
    layers: int
    tokens: int
    images: int

    def line(self) -> str:
        """One line for the terminal."""
        ratio = self.last_quarter / self.first_quarter if self.first_quarter > 0 else float("nan")
        return (f"gate change ({self.method} - plain backbone, mean |delta| over {self.layers} layers): "
                f"first quarter of the sequence {self.first_quarter:.2e}, last quarter {self.last_quarter:.2e} "
                f"(last / first {ratio:.2f}; plain gate mean {self.plain_mean:.2e})")


def gate_change(plain: np.ndarray, tuned: np.ndarray, method: str, images: int) -> GateChange:
    """The mean ``|tuned - plain|`` over layers in the first and last quarter of the patch tokens.

    Args:
        plain, tuned: (L, M) gates averaged over channels, directions and images, patches in sequence order.
        method: the tuned model's method name.
        images: how many images the gates were averaged over (recorded).

    Raises:
        ValueError: shapes that differ or fewer than 4 patch tokens (no quarters to compare).
    """
    if plain.shape != tuned.shape or plain.ndim != 2:
        raise ValueError(f"gate_change needs two (layers, tokens) arrays of one shape, got {plain.shape} "
                         f"and {tuned.shape}")
    depth, tokens = plain.shape
    if tokens < 4:
        raise ValueError(f"gate_change needs at least 4 patch tokens to compare quarters, got {tokens}")
    quarter = tokens // 4
    change = np.abs(tuned.astype(np.float64) - plain.astype(np.float64))
    return GateChange(method, float(change[:, :quarter].mean()), float(change[:, -quarter:].mean()),
                      float(plain.mean()), depth, tokens, images)


def write_gate_change(change: GateChange, path: str | Path) -> Path:
    """``change`` as JSON at ``path`` (read back by :func:`read_gate_change`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(asdict(change), indent=2) + "\n")
    return path


def read_gate_change(path: str | Path) -> GateChange:
    """A :class:`GateChange` written by :func:`write_gate_change`.

    Raises:
        ValueError: the file is not such a record (named).
    """
    try:
        return GateChange(**json.loads(Path(path).read_text(encoding="utf-8")))
    except (ValueError, TypeError) as err:
        raise ValueError(f"'{path}' is not a gate-change record written by vimtune viz ({err})") from None


def gate_table(changes: Sequence[GateChange]) -> str:
    """A markdown table: one row per method, the first- and last-quarter change and their ratio."""
    rows = ["| method | mean abs. gate change, first quarter | last quarter | last / first | plain gate mean |",
            "|---|---|---|---|---|"]
    for c in changes:
        ratio = f"{c.last_quarter / c.first_quarter:.2f}" if c.first_quarter > 0 else "n/a"
        rows.append(f"| {c.method} | {c.first_quarter:.2e} | {c.last_quarter:.2e} | {ratio} | {c.plain_mean:.2e} |")
    return "\n".join(rows)
