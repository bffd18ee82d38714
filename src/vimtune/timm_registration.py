"""Make ``import vimtune`` register the Vim configs with timm without importing torch itself.

Registering needs timm (and so torch, seconds to import), which ``vimtune --help`` must not pay
for. So: if timm is already imported, :mod:`vimtune.models` is imported (and registers) at once;
otherwise an import hook imports it right after timm's own import finishes. Either way
``timm.create_model("vim_small_patch16_224")`` works after ``import vimtune``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType

MODELS_MODULE = "vimtune.models"


class _RegisterAfter:
    """Runs timm's own loader, then imports :mod:`vimtune.models`."""

    def __init__(self, loader: object) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> object:  # everything else (resource readers...) is timm's loader's
        return getattr(self.loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _remove_hook()
        importlib.import_module(MODELS_MODULE)


class _TimmImportHook:
    """Finds ``timm`` through the other finders and wraps its loader in :class:`_RegisterAfter`."""

    searching = False

    def find_spec(self, fullname: str, path: object, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != "timm" or self.searching:
            return None
        self.searching = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.searching = False
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfter(spec.loader)
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _TimmImportHook)]


def register_with_timm() -> None:
    """Register the Vim configs with timm now if timm is loaded, else as soon as it is imported."""
    if "timm" in sys.modules:
        importlib.import_module(MODELS_MODULE)
    elif not any(isinstance(finder, _TimmImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TimmImportHook())
