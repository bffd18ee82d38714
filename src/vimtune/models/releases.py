"""The authors' released ImageNet-1k checkpoints and where they live on the Hugging Face Hub.

A plain table (no torch): the model zoo, ``timm``'s ``pretrained_cfg`` and the stride check of
:func:`vimtune.models.load_checkpoint` all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class Release:
    """One released checkpoint: its Hub repository, file, patch stride and ImageNet-1k top-1."""

    hub_id: str
    filename: str
    stride: int
    top1: float

    @property
    def spec(self) -> str:
        """The weights spec naming this file (``hf-hub:<repo>/<file>``, see :func:`resolve_weights`)."""
        return f"hf-hub:{self.hub_id}/{self.filename}"


#: config name -> release. The ``_ft_`` files are the stride-8 ("+") models.
RELEASES: dict[str, Release] = {
    "vim_tiny_patch16_224": Release("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth", 16, 76.1),
    "vim_tiny_patch16_stride8_224": Release("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_ft_78p3acc.pth", 8, 78.3),
    "vim_small_patch16_224": Release("hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth", 16, 80.5),
    "vim_small_patch16_stride8_224": Release(
        "hustvl/Vim-small-midclstok", "vim_s_midclstok_ft_81p6acc.pth", 8, 81.6),
    "vim_base_patch16_224": Release("hustvl/Vim-base-midclstok", "vim_b_midclstok_81p9acc.pth", 16, 81.9),
}


def release_for_file(name: str) -> tuple[str, Release] | None:
    """(config name, release) of the released file called like the last part of ``name``, else None."""
    filename = PurePosixPath(str(name).replace("\\", "/")).name
    return next(((config, r) for config, r in RELEASES.items() if r.filename == filename), None)


def release_spec(model_name: str) -> str:
    """The weights spec of ``model_name``'s released file; ``ValueError`` when it has none."""
    if model_name not in RELEASES:
        raise ValueError(f"{model_name} has no released weights; models with a release: {', '.join(RELEASES)}")
    return RELEASES[model_name].spec
