"""What ``vimtune demo`` runs: :class:`DemoSettings`, whose defaults are the command's defaults.

Imports nothing heavy, so that ``vimtune demo --help`` shows the defaults without importing torch;
:func:`~vimtune.demo.runner.run_demo` runs the settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vimtune.demo.backbone_spec import BackboneSpec
from vimtune.demo.protocol_spec import Protocol


@dataclass
class DemoSettings:
    """What the demo runs (defaults: the ``vimtune demo`` defaults, sized for < 5 min on 2 CPU cores).

    Attributes:
        output_dir: the demo's folder.
        backbone: the backbone to fine-tune (default: the committed one; a missing file falls
            back to a random backbone with a loud warning).
        methods: keys of :data:`~vimtune.demo.protocol_spec.METHOD_VARIANTS`.
        train_size, test_size: digits per split (stratified, fixed by ``seed``).
        protocol: epochs, batch, learning rates (no validation split: protocol ``last``).
        seed: split and training seed.
        results: when set, also write the table, machine and timings to ``<results>.<cpu slug>.md`` /
            ``.json`` (:func:`vimtune.bench.runner.write_results`).
    """

    output_dir: Path = Path("runs/demo")
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    methods: list[str] = field(default_factory=lambda: ["svp", "linear"])
    train_size: int = 300
    test_size: int = 300
    protocol: Protocol = field(default_factory=lambda: Protocol(epochs=2, batch_size=16, lr=5e-3, validate=False))
    seed: int = 0
    results: Path | None = None
