"""``vimtune demo`` and the fine-tuning protocol it shares with ``vimtune bench transfer``.

    from vimtune.demo import DemoSettings, run_demo
    result = run_demo(DemoSettings(output_dir=Path("runs/demo")))   # SVP vs linear probe on digits

The pieces: :mod:`~vimtune.demo.backbone` (which backbone, its weights, fresh heads),
:mod:`~vimtune.demo.digits` (scikit-learn's digits as a VTAB-layout task),
:mod:`~vimtune.demo.protocol` (one (task, method, seed) cell through the engine).
What the command-line options need (:mod:`~vimtune.demo.backbone_spec`,
:mod:`~vimtune.demo.protocol_spec`, :mod:`~vimtune.demo.settings`) imports nothing heavy; each name
below is imported from its module on first use, so ``vimtune demo --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it (imported on first access).
_EXPORTS: dict[str, str] = {
    "DEFAULT_BACKBONE": "vimtune.demo.backbone_spec",
    "BackboneSpec": "vimtune.demo.backbone_spec",
    "MissingWeightsError": "vimtune.demo.backbone_spec",
    "ResolvedBackbone": "vimtune.demo.backbone",
    "resolve_backbone": "vimtune.demo.backbone",
    "write_digits_task": "vimtune.demo.digits",
    "METHOD_VARIANTS": "vimtune.demo.protocol_spec",
    "Protocol": "vimtune.demo.protocol_spec",
    "check_methods": "vimtune.demo.protocol_spec",
    "run_cell": "vimtune.demo.protocol",
    "DemoSettings": "vimtune.demo.settings",
    "results_table": "vimtune.demo.runner",
    "run_demo": "vimtune.demo.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """``vimtune.demo.NAME``: the public ``NAME`` from its module, imported now (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    """The module's attributes with the public names not imported yet."""
    return sorted([*globals(), *__all__])
