"""The model-zoo table printed by ``vimtune info`` and shown in docs/models.md (``scripts/sync_readme.py``)."""

from __future__ import annotations

from pathlib import Path

import torch
from timm.models import get_pretrained_cfg

from vimtune.models.zoo import MODEL_CONFIGS, create_vim


def zoo_rows() -> list[dict[str, object]]:
    """One row per named config: name, parameters (1000-class head for released ones), tokens, input size,
    the release's top-1, and where ``pretrained=True`` reads its weights (from the config's timm
    ``pretrained_cfg``: ``hf_hub_id`` + ``hf_hub_filename``, or the ``file`` committed in the package).

    Models are built on the ``meta`` device, so no memory is spent on weights.
    """
    rows = []
    for name, (_, release_file, top1) in MODEL_CONFIGS.items():
        cfg = get_pretrained_cfg(name)
        with torch.device("meta"):
            model = create_vim(name, num_classes=1000 if release_file else 10)
        rows.append({
            "name": name,
            "params": sum(p.numel() for p in model.parameters()),
            "tokens": model.pos_embed.shape[1],
            "img_size": model.img_size[0],
            "top1": top1,
            "hf_hub_id": cfg.hf_hub_id,
            "hf_hub_filename": cfg.hf_hub_filename,
            "package_file": Path(cfg.file).name if cfg.file else None,
        })
    return rows


def _weights_cells(row: dict[str, object]) -> str:
    """The two weights cells of ``row``: Hub id and file, or the file shipped in the package."""
    if row["hf_hub_id"]:
        return f"`{row['hf_hub_id']}` | `{row['hf_hub_filename']}`"
    if row["package_file"]:
        return f"- (in the package) | `{row['package_file']}`"
    return "- | - (for CPU experiments)"


def zoo_markdown() -> str:
    """Markdown table of :func:`zoo_rows`."""
    lines = [
        "| model | params | tokens | input | ImageNet-1k top-1 (release) | Hugging Face Hub id | weights file |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for row in zoo_rows():
        top1 = f"{row['top1']:.1f}" if row["top1"] is not None else "-"
        lines.append(f"| `{row['name']}` | {row['params']:,} | {row['tokens']} | {row['img_size']} | {top1} | "
                     f"{_weights_cells(row)} |")
    return "\n".join(lines)
