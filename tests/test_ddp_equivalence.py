"""``torchrun`` with 2 CPU processes (gloo) ends with the weights of one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers.runs import make_image_folder
from vimtune.engine import build_config, load_recipe, run_training

GLOBAL_BATCH = 12  # = the whole training set: every update sees every image, whatever the sampler's order
EPOCHS = 3


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 4, "val": 3})
    common = [("data.root", str(data)), ("data.test_split", None), ("train.epochs", EPOCHS),
              ("optim.scale_lr", True), ("optim.clip_grad", 1.0)]

    ddp_run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "vimtune", "train", "--config", "smoke", "--output-dir", str(ddp_run),
           "--batch-size", str(GLOBAL_BATCH // 2)]
    cmd += [arg for key, value in common for arg in ("--set", f"{key}={'null' if value is None else value}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) x batch 6" in proc.stdout

    single = build_config(load_recipe("smoke"), [*common, ("output_dir", str(tmp_path / "single")),
                                                 ("data.batch_size", GLOBAL_BATCH)])
    run_training(single)

    ddp_records, single_records = _records(ddp_run), _records(tmp_path / "single")
    assert [r["global_step"] for r in ddp_records] == [r["global_step"] for r in single_records] == [1, 2, 3]
    for ddp_r, single_r in zip(ddp_records, single_records, strict=True):
        assert ddp_r["lr"] == single_r["lr"]  # scaled by the global batch (12 / 512) in both
        assert abs(ddp_r["train_loss"] - single_r["train_loss"]) < 1e-5
        assert ddp_r["val_top1"] == single_r["val_top1"]  # sharded evaluation counts each image once
        assert abs(ddp_r["val_loss"] - single_r["val_loss"]) < 1e-5
    ddp_weights, single_weights = load_file(ddp_run / "weights/last.safetensors"), load_file(
        tmp_path / "single/weights/last.safetensors")
    assert ddp_weights.keys() == single_weights.keys()
    for key in ddp_weights:
        torch.testing.assert_close(ddp_weights[key], single_weights[key], rtol=1e-4, atol=1e-6, msg=key)
    assert not (tmp_path / "single/weights/best_test.safetensors").exists()
