"""A Hugging Face cache folder laid out as ``huggingface_hub`` writes it, holding generated release files.

``models--<owner>--<repo>/blobs/<sha256>``, ``snapshots/<revision>/<file>`` (a relative symlink to
the blob) and ``refs/main`` (the revision): what ``hf_hub_download`` reads with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants

import vimtune.models  # noqa: F401 - registers the Vim configs

REVISION = "0123456789abcdef0123456789abcdef01234567"
TINY_REPO = "hustvl/Vim-tiny-midclstok"
TINY_FILE = "vim_t_midclstok_76p1acc.pth"
TINY_STRIDE8_FILE = "vim_t_midclstok_ft_78p3acc.pth"
DEPTH = 2  # the released configs have 24 blocks; 2 keep the files small, the key layout is the release's


def release_payload(model_name: str, seed: int) -> dict[str, object]:
    """A training checkpoint in the release's layout: ``model``, ``model_ema``, ``optimizer``, ``args``..."""
    torch.manual_seed(seed)
    model = timm.create_model(model_name, depth=DEPTH)
    state = model.state_dict()
    return {
        "model": state,
        "model_ema": {k: v + 1.0 for k, v in state.items()},  # different, so a test sees which one loaded
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0]}]},
        "lr_scheduler": {"last_epoch": 299},
        "epoch": 299,
        "scaler": {},
        "args": argparse.Namespace(model=model_name, input_size=224, batch_size=128),
    }


def write_hub_file(cache: Path, repo_id: str, filename: str, payload: object) -> Path:
    """Store ``payload`` as ``repo_id``'s ``filename`` at :data:`REVISION`; returns the snapshot path."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    staging = repo / "blobs" / "staging"
    torch.save(payload, staging)
    blob = staging.rename(repo / "blobs" / hashlib.sha256(staging.read_bytes()).hexdigest())
    snapshot = repo / "snapshots" / REVISION / filename
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def tiny_release_cache(cache: Path) -> dict[str, dict[str, object]]:
    """The two Vim-tiny release files (stride 16 and stride 8) in ``cache``; returns their payloads by file."""
    payloads = {TINY_FILE: release_payload("vim_tiny_patch16_224", seed=1),
                TINY_STRIDE8_FILE: release_payload("vim_tiny_patch16_stride8_224", seed=2)}
    for filename, payload in payloads.items():
        write_hub_file(cache, TINY_REPO, filename, payload)
    return payloads


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, dict[str, object]]]:
    """A cache with the Vim-tiny release files, used by ``huggingface_hub`` in this process, offline.

    ``huggingface_hub`` reads ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` once, at import, into
    ``huggingface_hub.constants``; these are set here (a subprocess test sets the variables themselves).
    """
    cache = tmp_path / "hf-cache"
    payloads = tiny_release_cache(cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache, payloads
