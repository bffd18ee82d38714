"""Run configuration: dataclasses filled from YAML recipes and command-line overrides.

Precedence, lowest first: dataclass defaults < the YAML recipe (``--config``) < ``--set key=value``
overrides < explicit command-line flags. Keys are dotted paths (``optim.lr``,
``data.augment.recipe``, ``model.kwargs.depth``); unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vimtune.data import AugmentConfig
from vimtune.engine.checkpoint import atomic_write_text


@dataclass
class ModelConfig:
    """The network and how it is adapted.

    Attributes:
        name: a registered timm model name (``vim_micro_patch4_32``, ``vim_small_patch16_224``...).
        kwargs: constructor overrides (``depth``, ``embed_dim``, ``drop_path_rate``...).
        backbone_weights: weights loaded before the method is attached: a file (release ``.pth``,
            state dict or ``.safetensors``) or ``hf-hub:<owner>/<repo>/<file>`` (see
            :func:`vimtune.models.resolve_weights`); ``None`` trains from a fresh initialisation,
            which a fine-tune (``method`` set) accepts only with ``random_backbone``.
        random_backbone: fine-tune a randomly initialised backbone on purpose (``--random-backbone``);
            it is stored in the run folder so that evaluation uses exactly it.
        allow_stride_change: load ``backbone_weights`` of another patch stride, resizing their
            ``pos_embed`` (refused by default: see :func:`vimtune.models.load_checkpoint`).
        method: a :mod:`vimtune.methods` name (``svp``, ``linear``, ``full``...); ``None`` trains
            every parameter (``vimtune train``).
        method_options: keyword arguments of ``vimtune.methods.build``.
    """

    name: str = "vim_micro_patch4_32"
    kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_weights: str | None = None
    random_backbone: bool = False
    allow_stride_change: bool = False
    method: str | None = None
    method_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Dataset, splits and loading.

    Attributes:
        kind: ``imagefolder``, ``vtab``, ``fgvc``, ``cifar10`` or ``cifar100``.
        root: dataset folder (``ROOT/<split>/<class>/...`` for imagefolder, the task folder for VTAB).
        train_split: split trained on (``train`` or ``trainval``).
        val_split: split evaluated after every epoch to select the epoch (protocol ``val``);
            ``None`` for none. Kinds without a validation split (CIFAR) skip ``val`` with a note.
        test_split: split tested at the end (``None``: no test).
        batch_size: images per process and per step (the global batch is
            ``batch_size * world_size * optim.accum_steps``).
        eval_batch_size: batch for evaluation (default ``batch_size``).
        num_workers: DataLoader worker processes per training process.
        skip_bad_images: drop unreadable images (with a warning) instead of failing.
        allow_outside_root: accept list-file paths that leave the dataset root (``../x.png``);
            refused by default.
        augment: augmentation settings (see :class:`vimtune.data.AugmentConfig`).
    """

    kind: str = "imagefolder"
    root: str | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    test_split: str | None = "test"
    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int = 2
    skip_bad_images: bool = False
    allow_outside_root: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class OptimConfig:
    """AdamW (or another timm optimizer), warmup + cosine schedule.

    Attributes:
        opt: timm optimizer name.
        lr: base learning rate; with ``scale_lr`` the one used is ``lr * global_batch / 512``.
        scale_lr: scale ``lr``, ``warmup_lr`` and ``min_lr`` by the global batch / 512.
        weight_decay: decay of the weights; norms, biases, ``pos_embed``, ``cls_token`` and the
            method's exclusions take none.
        clip_grad: clip the gradient norm to this value (``None``: no clipping).
        sched: timm scheduler name (``cosine``, ``step``, ``const``...).
        warmup_epochs: linear warmup from ``warmup_lr``.
        warmup_lr: learning rate at the start of warmup.
        min_lr: floor of the cosine schedule.
        step_on_updates: step the schedule after every optimizer update (else once per epoch).
        accum_steps: batches per optimizer update; each update follows the mean loss over its batches
            (a shorter last group of an epoch: over the batches it holds).
    """

    opt: str = "adamw"
    lr: float = 5e-4
    scale_lr: bool = True
    weight_decay: float = 0.05
    clip_grad: float | None = None
    sched: str = "cosine"
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    step_on_updates: bool = True
    accum_steps: int = 1


@dataclass
class TrainConfig:
    """The training loop.

    Attributes:
        epochs: number of epochs.
        seed: seeds Python, NumPy and torch (process ``r`` uses ``seed + r``; the model is
            initialised identically on every process).
        device: ``auto`` (the process's GPU when there is one, else CPU), ``cpu`` or ``cuda``.
        bf16: run forward passes under bfloat16 autocast.
        ema: keep an exponential moving average of the trained weights; evaluation and the saved
            weights then use the average.
        ema_decay: EMA decay per optimizer update.
        test_every_epoch: test after every epoch too and keep the best-on-test weights (protocol
            ``best-test``: selects on the test set, reported with a warning).
        find_unused_parameters: passed to DistributedDataParallel.
    """

    epochs: int = 100
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    ema: bool = False
    ema_decay: float = 0.9998
    test_every_epoch: bool = False
    find_unused_parameters: bool = False


@dataclass
class RunConfig:
    """Everything a training run needs; ``config.yaml`` in the run folder holds one.

    Attributes:
        name: run name; the default output folder is ``runs/<name>``.
        output_dir: the run folder (default ``runs/<name>``).
    """

    name: str | None = None
    output_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def run_dir(self) -> Path:
        """The output folder: ``output_dir`` or ``runs/<name>``."""
        if self.output_dir:
            return Path(self.output_dir)
        name = self.name or f"{self.model.name}-{self.model.method or 'scratch'}"
        return Path("runs") / name


def _allows_none(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _base_type(annotation: Any) -> Any:
    """``float | None`` -> ``float``; ``dict[str, Any]`` -> ``dict``; ``tuple[float, float]`` -> ``tuple``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else Any
    return typing.get_origin(annotation) or annotation


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML value to the field's type (``"5e-4"`` to float, a list to a tuple...)."""
    if value is None:
        if _allows_none(annotation):
            return None
        raise ValueError(f"config key '{key}' cannot be null")
    base = _base_type(annotation)
    if dataclasses.is_dataclass(base):
        if not isinstance(value, dict):
            raise ValueError(f"config key '{key}' must be a mapping, got {value!r}")
        return from_dict(base, value, prefix=f"{key}.")
    try:
        if base is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if base in (int, float) and not isinstance(value, bool):
            number = base(float(value)) if base is int else float(value)
            if base is int and float(value) != number:
                raise TypeError
            return number
        if base is str and isinstance(value, (str, int, float)):
            return str(value)
        if base is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
        if base in (dict, list) and isinstance(value, base) or base is Any:
            return value
    except (TypeError, ValueError):
        pass
    raise ValueError(f"config key '{key}': {value!r} is not a valid {getattr(base, '__name__', base)}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking keys and converting value types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys here: {', '.join(prefix + n for n in names)}"
        )
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain nested dicts and lists (YAML- and JSON-safe)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", 0.001)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} is not of the form key=value (e.g. optim.lr=1e-3)")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` in nested dict ``data``, creating intermediate mappings."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"cannot set '{key}': '{part}' holds {child!r}, not a mapping")
        node = child
    node[leaf] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (an empty file gives ``{}``).

    Raises:
        ValueError: not UTF-8, not valid YAML, or content that safe loading refuses (python object
            tags); the message names the file and, where known, the line.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except UnicodeDecodeError as err:
        raise ValueError(f"config file '{path}' is not UTF-8 text ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ValueError(f"config file '{path}' is not valid YAML{where}: {problem} (expected a mapping of "
                         "plain keys and values; python object tags are refused)") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file '{path}' must hold a mapping at the top level")
    return data


def build_config(
    base: dict[str, Any] | None = None, overrides: typing.Iterable[tuple[str, Any]] = ()
) -> RunConfig:
    """A :class:`RunConfig` from a recipe dict with ``(dotted key, value)`` overrides applied in order."""
    data = copy.deepcopy(base or {})
    for key, value in overrides:
        apply_override(data, key, value)
    return from_dict(RunConfig, data)


def write_yaml(config: RunConfig, path: str | Path) -> None:
    """Atomically write ``config`` as YAML (the file ``build_config(read_yaml(path))`` reads back)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
