"""``vimtune viz``: pictures of what a trained model does inside its selective scans: the cls token's hidden
attention over the images, the gates (delta) against the plain backbone, SVP's prompt sizes, VPT's prompt reach."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vimtune.choices import PROTOCOLS

if TYPE_CHECKING:
    from vimtune.viz.pictures import Drawn
    from vimtune.viz.sources import VizSource

EPILOG = """examples:
  vimtune viz runs/svp-mnist img1.png img2.png --out pictures/
  vimtune viz --checkpoint runs/svp-mnist/adapter --backbone-weights backbone.safetensors img1.png --out pictures/
"""


def draw(source: VizSource, images: list[str], out: Path, prefix: str = "") -> Drawn:
    """Write the pictures of ``source`` on the image files ``images`` to ``out`` and print what was written (and
    the gate change against the plain backbone, when known)."""
    from vimtune.data import BadImageError  # torch: not for --help
    from vimtune.viz.pictures import make_pictures
    from vimtune.viz.sources import load_images

    try:
        inputs, shown = load_images(images, source.augment)
    except BadImageError as err:
        raise RuntimeError(str(err)) from err
    device = next(source.model.parameters()).device
    drawn = make_pictures(source.model, inputs.to(device), shown, out, source.method, plain=source.plain,
                          prefix=prefix)
    for path in drawn.files:
        print(f"wrote {path}")
    if drawn.gate_change is not None:
        print(drawn.gate_change.line())
    return drawn


def run(args: argparse.Namespace) -> int:
    from vimtune.viz.sources import from_checkpoint, from_run

    if args.checkpoint:
        source = from_checkpoint(args.checkpoint, args.model, args.backbone_weights, args.img_size)
        images = [args.run_dir, *args.images] if args.run_dir else args.images
    elif args.run_dir:
        source, images = from_run(args.run_dir, args.protocol, args.backbone_weights), args.images
    else:
        raise ValueError("give a run folder, or --checkpoint PATH (an adapter folder or full-model weights)")
    if not images:
        raise ValueError("give at least one image file")
    draw(source, images, Path(args.out), args.prefix)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "viz", help="pictures of hidden attention, gates and prompts of a trained model on some images",
        description=__doc__.split(": ", 1)[1], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run folder written by train/finetune")
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs")
    parser.add_argument("--prefix", default="", help="put before every file name")
    parser.add_argument("--protocol", choices=PROTOCOLS, help="which epoch's weights (default: val, else last)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="instead of a run: an adapter folder or full-model weights (.safetensors/.pth)")
    parser.add_argument("--model", help="model name (with --checkpoint of full-model weights)")
    parser.add_argument("--backbone-weights", metavar="PATH",
                        help="the backbone the run or adapter was trained on, when not where it was recorded "
                             "(checked by SHA-256 for a run; also drawn as the plain backbone)")
    parser.add_argument("--img-size", type=int, help="input side in pixels (with --checkpoint; default: the model's)")
    parser.set_defaults(func=run)
