"""``vimtune predict``: the top-k classes of image files under a trained run's model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from vimtune.choices import PROTOCOLS


def image_files(paths: list[str]) -> list[str]:
    """``paths`` with each folder replaced by the image files under it (recursively, sorted by path).

    Raises:
        ValueError: a folder holding no image file (by extension).
    """
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    files: list[str] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(str(path))
            continue
        found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        if not found:
            raise ValueError(f"folder '{path}' holds no image files")
        files += found
    return files


def run(args: argparse.Namespace) -> int:
    from vimtune.data import BadImageError  # torch: not for --help
    from vimtune.engine.inference import load_run, predict_images

    moved = [("model.backbone_weights", args.backbone_weights)] if args.backbone_weights else []
    loaded = load_run(args.run_dir, args.protocol, moved)
    if loaded.selection.warning:
        print(loaded.selection.warning, file=sys.stderr)
    args.images = image_files(args.images)
    try:
        predictions = predict_images(loaded, args.images, args.topk)
    except BadImageError as err:
        raise RuntimeError(str(err)) from err
    if args.json:
        print(json.dumps([{"image": path, "top": [{"class": c, "probability": p} for c, p in top]}
                          for path, top in zip(args.images, predictions, strict=True)], indent=2))
        return 0
    for path, top in zip(args.images, predictions, strict=True):
        print(f"{path}:")
        for rank, (name, probability) in enumerate(top, 1):
            print(f"  {rank}. {name:30s} {100 * probability:6.2f}%")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="print the top-k classes of images under a trained run's model",
        description=__doc__.split(": ", 1)[1],
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by train/finetune")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them")
    parser.add_argument("--protocol", choices=PROTOCOLS, help="which epoch's weights (default: val, else last)")
    parser.add_argument("--backbone-weights", metavar="PATH",
                        help="where the run's backbone weights are now, if moved (checked against its run.json)")
    parser.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a list")
    parser.set_defaults(func=run)
