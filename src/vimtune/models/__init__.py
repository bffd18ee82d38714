"""Vision Mamba models; importing this registers the named configs with timm."""

from vimtune.models.checkpoint import (
    CheckpointError,
    LoadReport,
    check_finite,
    load_checkpoint,
    load_safetensors,
    read_state_dict,
)
from vimtune.models.hub import ResolvedWeights, resolve_weights
from vimtune.models.mamba import BiMambaMixer, Block, RMSNorm
from vimtune.models.pos_embed import resize_pos_embed
from vimtune.models.releases import RELEASES, Release, release_spec
from vimtune.models.vim import VisionMamba
from vimtune.models.zoo import MODEL_CONFIGS, create_vim

__all__ = [
    "MODEL_CONFIGS",
    "RELEASES",
    "BiMambaMixer",
    "Block",
    "CheckpointError",
    "LoadReport",
    "RMSNorm",
    "Release",
    "ResolvedWeights",
    "VisionMamba",
    "check_finite",
    "create_vim",
    "load_checkpoint",
    "load_safetensors",
    "read_state_dict",
    "release_spec",
    "resize_pos_embed",
    "resolve_weights",
]
