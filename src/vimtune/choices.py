"""Names the command line offers as choices, in a module that imports nothing heavy.

Sub-command ``--help`` lists them without importing torch; :mod:`vimtune.data` and
:mod:`vimtune.engine` use the same tuples.
"""

from __future__ import annotations

#: The dataset layouts ``vimtune.data.build_dataset`` reads (its ``kind``).
DATASET_KINDS: tuple[str, ...] = ("imagefolder", "vtab", "fgvc", "cifar10", "cifar100")

#: The model-selection protocols of ``vimtune.engine.protocols``.
PROTOCOLS: tuple[str, ...] = ("val", "last", "best-test")
