"""``bias``: bias tuning (BitFit-style) plus the RMSNorm weights."""

from __future__ import annotations

from vimtune.methods.base import Method
from vimtune.models.mamba import RMSNorm
from vimtune.models.vim import VisionMamba


class BiasTuning(Method):
    """Trains every bias (patch embedding, ``conv1d``/``conv1d_b``, ``dt_proj``/``dt_proj_b``, and
    the biases of modules other methods insert), the weights of all RMSNorms (``layers.*.norm``,
    ``norm_f``), and the head."""

    name = "bias"

    def trained_names(self, model: VisionMamba) -> set[str]:
        names = set()
        for module_name, module in model.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for param_name, _ in module.named_parameters(recurse=False):
                if param_name == "bias" or (isinstance(module, RMSNorm) and param_name == "weight"):
                    names.add(prefix + param_name)
        return names
