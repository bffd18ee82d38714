"""Each method's default optimiser settings, in one place.

``vimtune finetune --method X`` uses them for every optimiser key the user's recipe, ``--set`` and
flags leave unset, and ``vimtune bench transfer --protocol vtab`` centres its learning-rate grid
on them. Every rate is per optimiser step at the batch actually used (``scale_lr`` off, as in the
VTAB-1k recipes), with AdamW, weight decay 1e-4 and a cosine schedule.

- ``svp``: the SVP release's recipe (SPEC-SVP section 3): base lr 5e-3 (its CIFAR-10, CIFAR-100
  and Food value; the release ranges from 5e-4 to 1.5e-2 per dataset), scaled by batch/512 at
  its batch of 96, i.e. 5e-3 * 96 / 512 = 9.375e-4 per step; weight decay 1e-4 (its value on six
  of ten datasets); warmup from and cosine down to 1e-5.
- ``linear``, ``bias``, ``vpt-shallow``, ``vpt-deep``, ``lora``, ``adapter``: AdamW lr 1e-3,
  weight decay 1e-4, cosine (the VTAB-1k settings of the PEFT papers and MambaPEFT).
- ``full``: every weight moves, so a rate ten times lower, 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MethodDefaults:
    """A method's default optimiser settings (``optim.*`` keys of a run config).

    Attributes:
        lr: learning rate per optimiser step (not scaled by the batch).
        weight_decay: AdamW weight decay.
        warmup_lr: learning rate at the start of the warmup.
        min_lr: floor of the cosine schedule.
    """

    lr: float
    weight_decay: float = 1e-4
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6

    def optim(self) -> dict[str, Any]:
        """The ``optim`` section these defaults fill (AdamW, cosine, no batch scaling)."""
        return {"opt": "adamw", "sched": "cosine", "scale_lr": False, "lr": self.lr,
                "weight_decay": self.weight_decay, "warmup_lr": self.warmup_lr, "min_lr": self.min_lr}


_PEFT = MethodDefaults(lr=1e-3)

#: Method name (``vimtune.methods``) -> its defaults.
METHOD_DEFAULTS: dict[str, MethodDefaults] = {
    "svp": MethodDefaults(lr=5e-3 * 96 / 512, warmup_lr=1e-5, min_lr=1e-5),
    "linear": _PEFT,
    "bias": _PEFT,
    "vpt-shallow": _PEFT,
    "vpt-deep": _PEFT,
    "lora": _PEFT,
    "adapter": _PEFT,
    "full": MethodDefaults(lr=1e-4),
}


def method_defaults(method: str) -> MethodDefaults:
    """The defaults of ``method``; a ``+`` composition (``"svp+lora"``) takes its first part's.

    Raises:
        ValueError: ``method`` (or its first part) has no defaults; the message lists the methods.
    """
    first = method.split("+")[0]
    if first not in METHOD_DEFAULTS:
        raise ValueError(f"no default settings for method {method!r}; known: {', '.join(METHOD_DEFAULTS)}")
    return METHOD_DEFAULTS[first]
