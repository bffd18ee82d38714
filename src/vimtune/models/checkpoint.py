"""Reading and loading checkpoints: the authors' release ``.pth``, plain state dicts, safetensors.

Loading is safe by default: ``torch.load(weights_only=True)`` with an allow-list holding only
what the release pickles besides tensors (an ``argparse.Namespace`` of training arguments).
Every file read here is refused, naming the file, when it is truncated or not of its format, and
when a tensor holds NaN or infinity (naming the tensors).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from vimtune.models.hub import describe_source, resolve_weights
from vimtune.models.pos_embed import resize_pos_embed, square_grid
from vimtune.models.releases import release_for_file

RELEASE_SAFE_GLOBALS: list[type] = [argparse.Namespace]
HEAD_KEYS = ("head.weight", "head.bias")
#: The image side (px) every released checkpoint was trained at.
RELEASE_IMG_SIZE = 224
StateDict = dict[str, Tensor]


class CheckpointError(RuntimeError):
    """A checkpoint could not be read, or does not fit the model."""


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did: keys left at their fresh values and adaptations made."""

    reset_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_safetensors(path: str | os.PathLike) -> StateDict:
    """Read a ``.safetensors`` file, refusing a truncated or foreign file with its path and size.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a complete safetensors file, or non-finite values (see :func:`check_finite`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: '{path}'")
    try:
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - SafetensorError has no public base class to name
        raise CheckpointError(
            f"cannot read '{path}' ({path.stat().st_size} bytes): expected a complete .safetensors file "
            f"(truncated by an interrupted copy or download?): {err}"
        ) from None
    check_finite(state, str(path))
    return state


def check_finite(state: Mapping[str, Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming every floating-point tensor of ``state`` with NaN or inf."""
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(bad[:10]) + (f", ... ({len(bad)} in all)" if len(bad) > 10 else "")
        raise CheckpointError(f"'{source}': {len(bad)} tensors hold NaN or infinite values: {shown}; "
                              "these weights are unusable (a diverged run?)")


def _unwrap(checkpoint: object, use_ema: bool, source: str) -> StateDict:
    """Pick the weights out of a training checkpoint dict (``model`` / ``state_dict`` / ``model_ema``)."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors or a training checkpoint, got {type(checkpoint)}")
    if use_ema and not isinstance(checkpoint.get("model_ema"), Mapping):
        found = "is None" if "model_ema" in checkpoint else "is absent"
        raise CheckpointError(
            f"{source}: EMA weights were asked for (use_ema=True) but its 'model_ema' {found}; "
            "load with use_ema=False to use the trained weights under 'model'"
        )
    keys = ("model_ema",) if use_ema else ("model", "state_dict")
    for key in keys:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    state = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{source}: entries that are not tensors: {not_tensors[:5]}; expected a state dict, or a "
            "training checkpoint with its weights under 'model' or 'state_dict'"
        )
    return state


_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_ENFORCE_PREFIX = re.compile(r"^\[enforce fail at [^\]]*\][ .]*")


def _load_failure(path: Path, err: Exception) -> CheckpointError:
    """One line for a file ``torch.load`` refused: an unsafe pickle (naming the type it asks for), or not a
    checkpoint at all (naming the file, its size and what was expected)."""
    message = str(err)
    unsafe = _UNSAFE_GLOBAL.search(message)
    if unsafe:
        return CheckpointError(
            f"cannot read checkpoint '{path}' safely: it pickles {unsafe.group(1)}, which weights_only loading "
            f"refuses (allowed besides tensors: {[t.__qualname__ for t in RELEASE_SAFE_GLOBALS]})")
    detail = message.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
    detail = _ENFORCE_PREFIX.sub("", " ".join(detail.split())).split(". ", 1)[0]  # torch's first sentence
    if isinstance(err, EOFError):
        reason = "the file is empty or ends early"
    elif "Weights only load failed" in message or isinstance(err, KeyError):
        reason = f"not a pickle or zip archive of tensors ({type(err).__name__}: {detail})"
    else:
        reason = detail or type(err).__name__
    size = path.stat().st_size
    return CheckpointError(
        f"'{path}' ({size} bytes) is not a PyTorch checkpoint: {reason}; expected a .safetensors file, a "
        "torch.save-d state dict or a training checkpoint (a truncated copy, or another kind of file?)")


def read_state_dict(path: str | os.PathLike, use_ema: bool = False) -> StateDict:
    """Read the model weights stored at ``path``.

    Accepts a ``.safetensors`` file, a plain ``torch.save``-d state dict, or a training
    checkpoint such as the release's (``{'model', 'optimizer', 'args', ...}``), as a local path or
    an ``hf-hub:<owner>/<repo>/<file>`` spec (see :func:`vimtune.models.resolve_weights`).
    ``use_ema`` reads the ``model_ema`` weights, and is an error when the file has none.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable (truncated, foreign, unsafe pickle) or non-finite weights, or
            ``use_ema`` on a file without EMA weights.
    """
    if not Path(path).is_file():
        path = resolve_weights(path).path
    path = Path(path)
    if path.suffix == ".safetensors":
        if use_ema:
            raise CheckpointError(f"'{path}': EMA weights were asked for (use_ema=True), but a .safetensors "
                                  "file holds one set of weights; load it with use_ema=False")
        return load_safetensors(path)
    try:
        with torch.serialization.safe_globals(RELEASE_SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name and a hint
        raise _load_failure(path, err) from err
    state = _unwrap(checkpoint, use_ema, str(path))
    check_finite(state, str(path))
    return state


def checkpoint_stride(source_name: str | None, old_grid: tuple[int, int] | None, model: nn.Module) -> int | None:
    """The patch stride a checkpoint was trained with, when it can be told; else None.

    Known for the authors' released files (by file name). For another file (a renamed release
    file, a user's own) whose ``pos_embed`` grid ``old_grid`` differs from the model's, it is
    inferred when that grid is exactly what a stride of patch / 2 or patch gives at the model's
    image size or, failing that, at the releases' :data:`RELEASE_IMG_SIZE` (so a stride-8 file
    trained at 224 px is recognised in a model built for 384 px).
    """
    release = release_for_file(source_name) if source_name else None
    if release is not None:
        return release[1].stride
    if old_grid is None or tuple(old_grid) == tuple(model.grid_size):
        return None
    patch = model.patch_embed.patch_size
    for height, width in (tuple(model.img_size), (RELEASE_IMG_SIZE, RELEASE_IMG_SIZE)):
        for stride in (patch // 2, patch):
            if tuple(old_grid) == ((height - patch) // stride + 1, (width - patch) // stride + 1):
                return stride
    return None


def adapt_state_dict(
    state_dict: Mapping[str, Tensor],
    model: nn.Module,
    source_name: str | None = None,
    allow_stride_change: bool = False,
) -> tuple[StateDict, LoadReport]:
    """Make a Vim state dict fit ``model``: resize ``pos_embed``, drop a head of another shape.

    Args:
        state_dict: weights with the release's names.
        model: a :class:`~vimtune.models.vim.VisionMamba` (uses ``grid_size``, ``patch_embed`` and ``head``).
        source_name: the file the weights come from (its name tells a released file's stride).
        allow_stride_change: resize ``pos_embed`` also for a checkpoint of another patch stride
            (see :func:`checkpoint_stride`); refused by default, since the features would be wrong.

    Returns:
        The adapted state dict and a report of what was changed.

    Raises:
        CheckpointError: a checkpoint of another stride without ``allow_stride_change``.
    """
    state = dict(state_dict)
    report = LoadReport()
    target = model.state_dict()
    pos = state.get("pos_embed")
    old_grid = square_grid(pos.shape[1] - 1) if pos is not None and pos.shape != target["pos_embed"].shape else None
    stride = checkpoint_stride(source_name, old_grid, model)
    if stride is not None and stride != model.patch_embed.stride:
        if not allow_stride_change:
            where = describe_source(source_name) if source_name else "checkpoint"
            raise CheckpointError(
                f"{where}: stride-{stride} weights for a stride-{model.patch_embed.stride} "
                "model (its pos_embed would be resized onto another grid, giving silently wrong features); "
                f"build the model with stride={stride}, or pass allow_stride_change=True "
                "(CLI: --set model.allow_stride_change=true) to resize pos_embed anyway"
            )
        report.notes.append(f"stride-{stride} weights loaded into a stride-{model.patch_embed.stride} model")
    if old_grid is not None:
        state["pos_embed"] = resize_pos_embed(pos, model.grid_size, old_grid=old_grid)
        report.notes.append(f"pos_embed resized from grid {old_grid} to {tuple(model.grid_size)}")
    for key in HEAD_KEYS:
        if key not in state:
            continue
        if key not in target:
            del state[key]
            report.notes.append(f"dropped {key}: the model has no head")
        elif state[key].shape != target[key].shape:
            report.notes.append(
                f"{key} of shape {tuple(state[key].shape)} left out for the model's {tuple(target[key].shape)}"
            )
            del state[key]
            report.reset_keys.append(key)
    return state, report


def check_keys(state_dict: Mapping[str, Tensor], model: nn.Module, allowed_missing: tuple[str, ...] = ()) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys, if any."""
    target = model.state_dict()
    missing = [k for k in target if k not in state_dict and k not in allowed_missing]
    unexpected = [k for k in state_dict if k not in target]
    mis_shaped = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in state_dict.items()
        if k in target and v.shape != target[k].shape
    ]
    if missing or unexpected or mis_shaped:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
                parts.append(f"{len(keys)} {title} keys: {shown}")
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(parts))


def load_checkpoint(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, Tensor],
    strict: bool = True,
    use_ema: bool = False,
    allow_stride_change: bool = False,
) -> LoadReport:
    """Load weights into a VisionMamba, adapting ``pos_embed`` and the head as needed.

    Args:
        model: the model to fill in place.
        source: a path or ``hf-hub:`` spec (see :func:`read_state_dict`) or a state dict.
        strict: raise on missing/unexpected/mis-shaped keys (a dropped head is allowed).
        use_ema: load the file's EMA weights (an error when it has none).
        allow_stride_change: resize ``pos_embed`` of a checkpoint of another patch stride instead
            of refusing it (see :func:`adapt_state_dict`).
    """
    is_file = isinstance(source, (str, os.PathLike))
    state = read_state_dict(source, use_ema) if is_file else dict(source)
    state, report = adapt_state_dict(state, model, os.fspath(source) if is_file else None, allow_stride_change)
    if strict:
        check_keys(state, model, allowed_missing=tuple(report.reset_keys))
    result = model.load_state_dict(state, strict=False)
    report.reset_keys = sorted(set(report.reset_keys) | set(result.missing_keys))
    return report
