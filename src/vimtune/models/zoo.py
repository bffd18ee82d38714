"""Named Vim configurations, registered with timm (``timm.create_model("vim_small_patch16_224")``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from vimtune.models.checkpoint import CheckpointError, load_checkpoint
from vimtune.models.vim import VisionMamba

# name -> (constructor arguments, release file, ImageNet-1k top-1 of the release)
MODEL_CONFIGS: dict[str, tuple[dict[str, Any], str | None, float | None]] = {
    "vim_tiny_patch16_224": (dict(embed_dim=192, patch_size=16), "vim_t_midclstok_76p1acc.pth", 76.1),
    "vim_tiny_patch16_stride8_224": (
        dict(embed_dim=192, patch_size=16, stride=8), "vim_t_midclstok_ft_78p3acc.pth", 78.3),
    "vim_small_patch16_224": (dict(embed_dim=384, patch_size=16), "vim_s_midclstok_80p5acc.pth", 80.5),
    "vim_small_patch16_stride8_224": (
        dict(embed_dim=384, patch_size=16, stride=8), "vim_s_midclstok_ft_81p6acc.pth", 81.6),
    "vim_base_patch16_224": (dict(embed_dim=768, patch_size=16), "vim_b_midclstok_81p9acc.pth", 81.9),
    "vim_micro_patch4_32": (dict(embed_dim=128, depth=12, patch_size=4, img_size=32), None, None),
    "vim_nano_patch4_32": (dict(embed_dim=64, depth=4, patch_size=4, img_size=32), None, None),
}

# Backbones trained by this project and shipped inside the package (model card beside each file).
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
COMMITTED_WEIGHTS: dict[str, str] = {"vim_micro_patch4_32": "vim_micro_patch4_32.cifar10.safetensors"}


def _cfg(name: str) -> dict[str, Any]:
    kwargs, release_file, _ = MODEL_CONFIGS[name]
    size = kwargs.get("img_size", 224)
    return {
        "url": "",
        "num_classes": 1000 if release_file else 10,
        "input_size": (3, size, size),
        "pool_size": None,
        "crop_pct": 0.875 if size >= 224 else 1.0,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2401.09417",
        "notes": (f"release file: {release_file}",) if release_file else None,
        "file": str(WEIGHTS_DIR / COMMITTED_WEIGHTS[name]) if name in COMMITTED_WEIGHTS else None,
    }


default_cfgs = generate_default_cfgs({name: _cfg(name) for name in MODEL_CONFIGS})


def create_vim(name: str, pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Build the named config; ``kwargs`` override its arguments as in timm's ViT.

    With ``pretrained=True`` the weights come from ``pretrained_cfg['file']`` (e.g.
    ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))``),
    a local ``.pth`` in the release's layout, a state dict file, or a ``.safetensors`` file.
    """
    config = {**MODEL_CONFIGS[name][0], **kwargs}
    pretrained_cfg_overlay = config.pop("pretrained_cfg_overlay", None)
    model = build_model_with_cfg(
        VisionMamba, name, pretrained=False, pretrained_cfg_overlay=pretrained_cfg_overlay, **config
    )
    if pretrained:
        file = model.pretrained_cfg.get("file")
        if file and not Path(file).is_file():
            packaged = name in COMMITTED_WEIGHTS and Path(file) == WEIGHTS_DIR / COMMITTED_WEIGHTS[name]
            where = "expected in the package" if packaged else "the file given in pretrained_cfg"
            raise CheckpointError(f"the weights file of {name} is missing: '{file}' ({where})")
        if not file:
            raise CheckpointError(
                f"no local weights for {name}: vimtune downloads nothing; pass "
                "pretrained_cfg_overlay=dict(file='/path/to/checkpoint.pth') (release .pth, state dict "
                "or .safetensors)"
            )
        load_checkpoint(model, file, strict=True)
    return model


def _register(name: str) -> None:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
        return create_vim(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"Vision Mamba config ``{name}``: {MODEL_CONFIGS[name][0]}."
    entrypoint.__module__ = __name__
    globals()[name] = register_model(entrypoint)


for _name in MODEL_CONFIGS:
    _register(_name)
