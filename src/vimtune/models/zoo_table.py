"""The model-zoo table printed by ``vimtune info`` and shown in the README."""

from __future__ import annotations

import torch

from vimtune.models.releases import RELEASES
from vimtune.models.zoo import MODEL_CONFIGS, create_vim


def zoo_rows() -> list[dict[str, object]]:
    """One row per named config: name, parameters (1000-class head for released ones), tokens, top-1, Hub id.

    Models are built on the ``meta`` device, so no memory is spent on weights.
    """
    rows = []
    for name, (_, release_file, top1) in MODEL_CONFIGS.items():
        with torch.device("meta"):
            model = create_vim(name, num_classes=1000 if release_file else 10)
        rows.append({
            "name": name,
            "params": sum(p.numel() for p in model.parameters()),
            "tokens": model.pos_embed.shape[1],
            "img_size": model.img_size[0],
            "top1": top1,
            "release_file": release_file,
            "hub_id": RELEASES[name].hub_id if name in RELEASES else None,
        })
    return rows


def zoo_markdown() -> str:
    """Markdown table of :func:`zoo_rows`."""
    lines = [
        "| model | params | tokens | input | ImageNet-1k top-1 (release) | release file | Hugging Face Hub |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for row in zoo_rows():
        top1 = f"{row['top1']:.1f}" if row["top1"] is not None else "-"
        lines.append(
            f"| `{row['name']}` | {row['params']:,} | {row['tokens']} | {row['img_size']} | {top1} | "
            f"{row['release_file'] or '- (for CPU experiments)'} | "
            f"{'`' + str(row['hub_id']) + '`' if row['hub_id'] else '-'} |"
        )
    return "\n".join(lines)
