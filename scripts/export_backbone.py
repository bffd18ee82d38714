"""Export the pretrained backbone of a `vimtune train` run into the package, with a measured model card.

    python scripts/export_backbone.py runs/pretrain_cifar10_micro --data ../shared/data/cifar10

Reads the run's last finished epoch (``checkpoint.pt``), writes the weights as safetensors to
``src/vimtune/weights/<model>.cifar10.safetensors``, tests them on ``DATA/test`` with
``vimtune eval --checkpoint`` and writes the model card (``<model>.cifar10.md``) from the run's
config, its ``metrics.jsonl`` and that test result. Every number in the card comes from this script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml
from safetensors.torch import save_file

from vimtune.engine.checkpoint import load_checkpoint_state

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "src" / "vimtune" / "weights"


def export(run_dir: Path, data: Path, out_dir: Path) -> Path:
    """Write weights + model card for the run's last finished epoch; returns the weights path."""
    state = load_checkpoint_state(run_dir / "checkpoint.pt")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    model_name = config["model"]["name"]
    weights = out_dir / f"{model_name}.cifar10.safetensors"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state["model"].items()}, str(weights),
              metadata={"epoch": str(state["epoch"]), "run": run_dir.name})
    eval_dir = run_dir / "export_eval"
    subprocess.run([sys.executable, "-m", "vimtune", "eval", "--checkpoint", str(weights), "--model", model_name,
                    "--img-size", str(config["data"]["augment"]["img_size"]), "--data-kind", "imagefolder",
                    "--data", str(data), "--split", "test", "--output-dir", str(eval_dir)], check=True)
    result = json.loads(next(eval_dir.glob("*.json")).read_text())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    hours = sum(h["epoch_time"] for h in history) / 3600
    card = f"""# {model_name}, pretrained on CIFAR-10 by vimtune

- Weights: `{weights.name}` (safetensors, {weights.stat().st_size / 2**20:.1f} MiB), loaded offline by
  `timm.create_model("{model_name}", pretrained=True)` after `import vimtune.models`.
- Data: CIFAR-10 train split (50,000 images, 32 px) as an ImageFolder tree; tested on its 10,000 test images.
- Recipe: `src/vimtune/configs/{config['name']}.yaml` ({config['train']['epochs']} epochs planned).
- Trained so far: **{state['epoch']} of {config['train']['epochs']} epochs**, {hours:.2f} h of wall time on
  a shared 2-core CPU (per-epoch times in the run's `metrics.jsonl`).
- CIFAR-10 test top-1: **{result['top1']:.2f}%** (top-5 {result['top5']:.2f}%, `vimtune eval` reports percentages).
- Reproduce: `vimtune train --config {config['name']} --data ../shared/data/cifar10`, continue with
  `vimtune train --resume --output-dir runs/{config['name']}`, then
  `python scripts/export_backbone.py runs/{config['name']} --data ../shared/data/cifar10`.
"""
    (out_dir / f"{model_name}.cifar10.md").write_text(card)
    print(card)
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="CIFAR-10 ImageFolder root (with test/)")
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args()
    export(args.run_dir, args.data, args.out_dir)


if __name__ == "__main__":
    main()
