"""A literal, functional transcription of SPEC-VIM sections 2-3 working on a state dict.

Independent of ``vimtune.models`` (only the reference scan is shared): the model's forward is
checked against it in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vimtune.ops.scan_reference import selective_scan_reference


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def mixer(sd: dict[str, Tensor], prefix: str, n: Tensor, d_state: int = 16) -> Tensor:
    """n (B, T, D) -> (B, T, D)."""
    dim = n.shape[-1]
    rank = math.ceil(dim / 16)
    xz = (n @ sd[prefix + "in_proj.weight"].T).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    outputs = []
    for suffix, a_name, d_name, flip in (("", "A_log", "D", False), ("_b", "A_b_log", "D_b", True)):
        xs, zs = (x.flip(-1), z.flip(-1)) if flip else (x, z)
        length = xs.shape[-1]
        conv = F.conv1d(F.pad(xs, (3, 0)), sd[prefix + f"conv1d{suffix}.weight"],
                        sd[prefix + f"conv1d{suffix}.bias"], groups=xs.shape[1])
        u = F.silu(conv[..., :length])
        dbl = u.transpose(1, 2) @ sd[prefix + f"x_proj{suffix}.weight"].T
        dt, b, c = dbl.split([rank, d_state, d_state], dim=-1)
        delta = (dt @ sd[prefix + f"dt_proj{suffix}.weight"].T).transpose(1, 2)
        y = selective_scan_reference(
            u, delta, -torch.exp(sd[prefix + a_name]), b.transpose(1, 2), c.transpose(1, 2),
            D=sd[prefix + d_name], z=zs, delta_bias=sd[prefix + f"dt_proj{suffix}.bias"], delta_softplus=True,
        )
        outputs.append(y.flip(-1) if flip else y)
    return ((outputs[0] + outputs[1]) / 2).transpose(1, 2) @ sd[prefix + "out_proj.weight"].T


def vim_forward(sd: dict[str, Tensor], images: Tensor, patch: int, stride: int, depth: int) -> Tensor:
    """images (B, 3, H, W) -> logits, as SPEC-VIM section 2 describes (no drop path)."""
    tokens = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=stride)
    tokens = tokens.flatten(2).transpose(1, 2)
    m = tokens.shape[1]
    cls = sd["cls_token"].expand(tokens.shape[0], -1, -1)
    x = torch.cat([tokens[:, : m // 2], cls, tokens[:, m // 2 :]], dim=1) + sd["pos_embed"]
    h, r = x, None
    for i in range(depth):
        r = h if r is None else r + h
        h = mixer(sd, f"layers.{i}.mixer.", rms_norm(r, sd[f"layers.{i}.norm.weight"]))
    out = rms_norm(r + h, sd["norm_f.weight"])
    return out[:, m // 2] @ sd["head.weight"].T + sd["head.bias"]
