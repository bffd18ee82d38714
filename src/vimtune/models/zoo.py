"""Named Vim configurations, registered with timm (``timm.create_model("vim_small_patch16_224")``).

The released configs' ``pretrained_cfg`` names their file on the Hugging Face Hub (``hf_hub_id`` +
``hf_hub_filename``): ``pretrained=True`` downloads it once through timm and ``huggingface_hub``
into the Hugging Face cache, and :meth:`VisionMamba.load_pretrained` reads it (``custom_load``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg

from vimtune.models.hub import hub_file_unavailable
from vimtune.models.releases import RELEASES
from vimtune.models.vim import VisionMamba

_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "vim_tiny_patch16_224": dict(embed_dim=192, patch_size=16),
    "vim_tiny_patch16_stride8_224": dict(embed_dim=192, patch_size=16, stride=8),
    "vim_small_patch16_224": dict(embed_dim=384, patch_size=16),
    "vim_small_patch16_stride8_224": dict(embed_dim=384, patch_size=16, stride=8),
    "vim_base_patch16_224": dict(embed_dim=768, patch_size=16),
    "vim_micro_patch4_32": dict(embed_dim=128, depth=12, patch_size=4, img_size=32),
    "vim_nano_patch4_32": dict(embed_dim=64, depth=4, patch_size=4, img_size=32),
}

# name -> (constructor arguments, release file, ImageNet-1k top-1 of the release)
MODEL_CONFIGS: dict[str, tuple[dict[str, Any], str | None, float | None]] = {
    name: (kwargs, RELEASES[name].filename if name in RELEASES else None,
           RELEASES[name].top1 if name in RELEASES else None)
    for name, kwargs in _ARCHITECTURES.items()
}

# Backbones trained by this project and shipped inside the package (model card beside each file).
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
COMMITTED_WEIGHTS: dict[str, str] = {"vim_micro_patch4_32": "vim_micro_patch4_32.cifar10.safetensors"}


def _cfg(name: str) -> dict[str, Any]:
    kwargs, release_file, _ = MODEL_CONFIGS[name]
    size = kwargs.get("img_size", 224)
    release = RELEASES.get(name)
    return {
        "url": "",
        "hf_hub_id": release.hub_id if release else None,
        "hf_hub_filename": release.filename if release else None,
        "custom_load": "hf",  # timm fetches the file, VisionMamba.load_pretrained reads the release layout
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
        "notes": (f"release file: {release.spec}",) if release else None,
        "file": str(WEIGHTS_DIR / COMMITTED_WEIGHTS[name]) if name in COMMITTED_WEIGHTS else None,
    }


default_cfgs = generate_default_cfgs({name: _cfg(name) for name in MODEL_CONFIGS})


def create_vim(name: str, pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Build the named config; ``kwargs`` override its arguments as in timm's ViT.

    With ``pretrained=True`` the weights come from the config's ``pretrained_cfg``: the authors'
    release on the Hugging Face Hub, the file committed in the package, or an overlay such as
    ``pretrained_cfg_overlay=dict(file=PATH)`` (release ``.pth``, state dict or ``.safetensors``).
    ``features_only=True`` (with ``out_indices``, default the last 3 blocks) gives timm's feature
    wrapper over :meth:`VisionMamba.forward_intermediates`.

    Raises:
        FileNotFoundError: a Hub file neither in the Hugging Face cache nor downloadable (one line
            naming the repository, the file, the cache folder and the fix).
    """
    config = {**MODEL_CONFIGS[name][0], **kwargs}
    overlay = config.pop("pretrained_cfg_overlay", None)
    if overlay:  # a file or url given here is read by VisionMamba.load_pretrained too
        overlay = {"custom_load": "hf", **overlay}
    out_indices = config.pop("out_indices", 3)
    try:
        return build_model_with_cfg(
            VisionMamba, name, pretrained=pretrained, pretrained_cfg_overlay=overlay,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **config,
        )
    except (EntryNotFoundError, HfHubHTTPError) as err:  # timm's download of the hf_hub_id file failed
        cfg = resolve_pretrained_cfg(name, pretrained_cfg=config.get("pretrained_cfg"), pretrained_cfg_overlay=overlay)
        raise hub_file_unavailable(cfg.hf_hub_id, cfg.hf_hub_filename, None, err) from err


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
