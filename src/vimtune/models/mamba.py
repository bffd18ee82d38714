"""Building blocks of Vision Mamba: RMSNorm, the bidirectional ("v2") Mamba mixer, the Block.

Parameter and module names follow the authors' release so that their state dicts load as-is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from vimtune.ops import resolve_backend, selective_scan
from vimtune.ops.cpu_linear import Linear, linear
from vimtune.ops.mixer_cpu import bimamba_forward_tm, mixer_kernels_available
from vimtune.ops.rms_norm_cpu import rms_norm

torch.fx.wrap("rms_norm")  # a call node in symbolic traces (its dispatch reads tensors)


def _wide(t: Tensor) -> Tensor:
    """``t`` in float32, or kept as is when it is already wider (float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2, -1) + eps) * weight``, computed in float32 (or wider), no bias.

    Input (..., D) -> output (..., D) in ``promote(x.dtype, float32)``.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = _wide(x)
        weight = self.weight.to(x.dtype)
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            return rms_norm(x, weight, self.eps)  # on CPU by vimtune's kernel
        return F.rms_norm(x, weight.shape, weight, self.eps)  # torch's op, which TorchScript compiles and records



class BiMambaMixer(nn.Module):
    """Bidirectional Mamba mixer of Vim ("bimamba v2", outputs of both directions averaged).

    Input (B, T, D) -> output (B, T, D). Inner width E = expand * D, state size N = d_state,
    dt rank R = ceil(D / 16).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str | None = None,
    ) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.scan_backend = scan_backend
        e, n, r = self.d_inner, d_state, self.dt_rank

        self.in_proj = Linear(d_model, 2 * e, bias=False)
        self.conv1d = nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1, bias=True)
        self.x_proj = Linear(e, r + 2 * n, bias=False)
        self.dt_proj = Linear(r, e, bias=True)
        self.A_log = nn.Parameter(torch.empty(e, n))
        self.D = nn.Parameter(torch.empty(e))
        self.conv1d_b = nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1, bias=True)
        self.x_proj_b = Linear(e, r + 2 * n, bias=False)
        self.dt_proj_b = Linear(r, e, bias=True)
        self.A_b_log = nn.Parameter(torch.empty(e, n))
        self.D_b = nn.Parameter(torch.empty(e))
        self.out_proj = Linear(e, d_model, bias=False)
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """S4D-real ``A``, unit ``D``, and ``dt_proj`` initialised so softplus(bias) ~ U-log[dt_min, dt_max]."""
        dt_min, dt_max, floor = self._dt_range
        device = self.A_log.device
        a_log = torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device))
        a_log = a_log.repeat(self.d_inner, 1)
        std = self.dt_rank**-0.5
        for a, d, dt_proj in ((self.A_log, self.D, self.dt_proj), (self.A_b_log, self.D_b, self.dt_proj_b)):
            a.copy_(a_log)
            d.fill_(1.0)
            nn.init.uniform_(dt_proj.weight, -std, std)
            log_dt = torch.rand(self.d_inner, device=device) * math.log(dt_max / dt_min) + math.log(dt_min)
            dt = torch.exp(log_dt).clamp(min=floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]

    def _scan_direction(
        self, x: Tensor, z: Tensor, conv: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear,
        A_log: Tensor, D: Tensor,
    ) -> Tensor:
        """One direction. x, z: (B, E, T) -> y (B, E, T)."""
        length = x.shape[-1]
        u = F.silu(conv(x)[..., :length])
        dbl = x_proj(u.transpose(1, 2))  # (B, T, R + 2N)
        dt, Bm, Cm = torch.split(dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = linear(dt, dt_proj.weight).transpose(1, 2)  # (B, E, T), bias added in the scan
        return selective_scan(
            u, delta, -torch.exp(_wide(A_log)), Bm.transpose(1, 2), Cm.transpose(1, 2),
            D=_wide(D), z=z, delta_bias=_wide(dt_proj.bias), delta_softplus=True,
            backend=self.scan_backend,
        )

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden (B, T, D) -> (B, T, D)."""
        backend = resolve_backend(hidden.device, self.scan_backend)
        if backend == "cpu" and mixer_kernels_available():
            return bimamba_forward_tm(self, hidden)  # time-major C++ kernels, no flips or transposes
        if backend == "triton":
            from vimtune.ops.triton.mixer import bimamba_forward_triton  # imports triton: only when used

            return bimamba_forward_triton(self, hidden)  # time-major Triton kernels, likewise
        xz = self.in_proj(hidden).transpose(1, 2)  # (B, 2E, T)
        x, z = xz.chunk(2, dim=1)
        y_fwd = self._scan_direction(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        y_bwd = self._scan_direction(
            x.flip(-1), z.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b
        )
        y = (y_fwd + y_bwd.flip(-1)) / 2
        return self.out_proj(y.transpose(1, 2))


class Block(nn.Module):
    """Pre-norm residual block of Vim: ``r = r + DropPath(h); h = Mixer(RMSNorm(r))``.

    The residual stream ``r`` is kept in float32 (float64 for a float64 model). Two optional hook
    slots let fine-tuning methods act without copying this code:

    - ``prompter(h, cls_index) -> h``: applied to the incoming ``h`` (block 0: the embedded
      tokens; block l >= 1: the previous block's mixer output) before drop path and the add.
    - ``residual_hook(r, cls_index) -> r``: applied to the residual stream after the add, before
      the norm (e.g. deep prompt tokens replaced at every block).
    """

    def __init__(self, dim: int, drop_path: float = 0.0, norm_eps: float = 1e-5, **mixer_kwargs) -> None:
        super().__init__()
        self.mixer = BiMambaMixer(dim, **mixer_kwargs)
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.prompter: nn.Module | None = None
        self.residual_hook: nn.Module | None = None

    def add_residual(self, hidden: Tensor, residual: Tensor | None, cls_index: int) -> Tensor:
        """The block's first half: hidden (B, T, D), residual (B, T, D) float32 or None -> new residual."""
        if self.prompter is not None:
            hidden = self.prompter(hidden, cls_index)
        residual = _wide(hidden) if residual is None else residual + self.drop_path(hidden).to(residual.dtype)
        if self.residual_hook is not None:
            residual = self.residual_hook(residual, cls_index)
        return residual

    def mix(self, residual: Tensor) -> Tensor:
        """The block's second half: residual (B, T, D) -> new hidden ``Mixer(RMSNorm(residual))`` (B, T, D)."""
        return self.mixer(self.norm(residual).to(self.norm.weight.dtype))

    def forward(self, hidden: Tensor, residual: Tensor | None, cls_index: int) -> tuple[Tensor, Tensor]:
        """hidden (B, T, D), residual (B, T, D) float32 or None -> (new hidden, new residual)."""
        residual = self.add_residual(hidden, residual, cls_index)
        return self.mix(residual), residual
