"""Tiny datasets and run folders for the engine, training and CLI tests; CLI subprocesses; file checksums."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

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
