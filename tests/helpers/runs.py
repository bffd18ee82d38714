"""Tiny datasets and run folders for the engine, training and CLI tests; CLI subprocesses; file checksums."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from vimtune.engine import load_checkpoint_state

SMOKE = ["--config", "smoke"]
CLASSES = ("circle", "square", "stripes")


def _image(rng: np.random.Generator, label: int, size: int) -> Image.Image:
    """A 16 px image whose mean colour depends on the label, plus noise."""
    base = np.zeros((size, size, 3), dtype=np.float64)
    base[..., label % 3] = 200.0
    noise = rng.normal(0.0, 30.0, size=(size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def make_image_folder(root: Path, per_class: dict[str, int] | None = None, size: int = 16) -> Path:
    """``root/{train,val,test}/<class>/<i>.png`` with ``per_class`` images of each class per split."""
    per_class = per_class or {"train": 8, "val": 2, "test": 2}
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _image(rng, label, size).save(folder / f"{i:03d}.png")
    return root


def make_vtab_task(root: Path, counts: dict[str, int] | None = None, size: int = 16) -> Path:
    """A VTAB-1k-style task folder (list files + images/ + classes.txt)."""
    counts = counts or {"train800.txt": 12, "val200.txt": 6, "test.txt": 6}
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    lines_all = []
    for list_file, count in counts.items():
        lines = []
        for i in range(count):
            label = i % len(CLASSES)
            rel = f"images/{list_file.split('.')[0]}_{i:03d}.png"
            _image(rng, label, size).save(root / rel)
            lines.append(f"{rel} {label}")
        (root / list_file).write_text("\n".join(lines) + "\n")
        if list_file in ("train800.txt", "val200.txt"):
            lines_all += lines
    (root / "train800val200.txt").write_text("\n".join(lines_all) + "\n")
    return root


def vimtune_cmd(*args: str) -> list[str]:
    """``python -m vimtune ARGS`` with this interpreter."""
    return [sys.executable, "-m", "vimtune", *args]


def run_cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``vimtune ARGS`` in a subprocess (2 torch threads), capturing its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TQDM_DISABLE": "1"}
    return subprocess.run(vimtune_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative path -> digest)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def assert_identical(actual: object, expected: object, where: str = "") -> None:
    """Nested dicts / lists / tuples of tensors and plain values are equal, tensors bit for bit."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and actual.dtype == expected.dtype, where
        assert torch.equal(actual, expected), f"{where}: tensors differ"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), f"{where}: keys differ"
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), f"{where}: lengths differ"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_identical(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def assert_same_training(run: Path, reference: Path) -> None:
    """Two run folders hold the same training, bit for bit: every saved weight file, the checkpoint's
    weights, EMA, optimizer state and RNG streams, and the per-epoch records (epoch times aside)."""
    resumed, uninterrupted = load_checkpoint_state(run / "checkpoint.pt"), load_checkpoint_state(
        reference / "checkpoint.pt")
    for key in ("epoch", "global_step", "best", "model", "ema", "optimizer", "rng"):
        assert_identical(resumed[key], uninterrupted[key], key)
    weights = sorted(p.name for p in (reference / "weights").iterdir())
    assert sorted(p.name for p in (run / "weights").iterdir()) == weights
    for name in weights:
        assert_identical(load_file(run / "weights" / name), load_file(reference / "weights" / name), name)

    def records(folder: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "epoch_time"}
                for line in (folder / "metrics.jsonl").read_text().splitlines()]

    assert records(run) == records(reference)


class NoSchedule:
    """A stand-in for the engine's scheduler that keeps the learning rate (for EpochRunner unit tests)."""

    def step_update(self, num_updates: int) -> None:
        pass
