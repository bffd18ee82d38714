"""``vimtune demo`` and the fine-tuning protocol it shares with ``vimtune bench transfer``.

    from vimtune.demo import DemoSettings, run_demo
    result = run_demo(DemoSettings(output_dir=Path("runs/demo")))   # SVP vs linear probe on digits

The pieces: :mod:`~vimtune.demo.backbone` (which backbone, its weights, fresh heads),
:mod:`~vimtune.demo.digits` (scikit-learn's digits as a VTAB-layout task),
:mod:`~vimtune.demo.protocol` (one (task, method, seed) cell through the engine).
"""

from vimtune.demo.backbone import (
    DEFAULT_BACKBONE,
    BackboneSpec,
    MissingWeightsError,
    ResolvedBackbone,
    resolve_backbone,
)
from vimtune.demo.digits import write_digits_task
from vimtune.demo.protocol import METHOD_VARIANTS, Protocol, check_methods, run_cell
from vimtune.demo.runner import DemoSettings, results_table, run_demo

__all__ = [
    "DEFAULT_BACKBONE",
    "METHOD_VARIANTS",
    "BackboneSpec",
    "DemoSettings",
    "MissingWeightsError",
    "Protocol",
    "ResolvedBackbone",
    "check_methods",
    "resolve_backbone",
    "results_table",
    "run_cell",
    "run_demo",
    "write_digits_task",
]
