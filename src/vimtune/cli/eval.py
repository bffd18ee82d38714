"""``vimtune eval``: test a run's selected weights (or a checkpoint file): top-1/top-5, per-class
accuracy and a confusion-matrix PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vimtune.choices import DATASET_KINDS, PROTOCOLS
from vimtune.cli._run_options import add_config_options, overrides_from_args

if TYPE_CHECKING:
    from vimtune.engine.inference import LoadedModel
    from vimtune.engine.metrics import ClassificationMeter

EPILOG = """protocols:
  val        the epoch with the best validation top-1, tested once (needs a val split during training)
  last       the weights after the last epoch
  best-test  the epoch with the best TEST top-1 (the SVP release's practice; optimistic, prints a WARNING)

examples:
  vimtune eval runs/svp-cifar                       # protocol val when available, else last
  vimtune eval runs/svp-cifar --protocol best-test
  vimtune eval --checkpoint runs/pretrain/weights/last.safetensors --model vim_micro_patch4_32 \\
      --data-kind imagefolder --data /data/cifar10 --split test --img-size 32
"""


def unused_folder(path: Path) -> Path:
    """``path``, or when it exists ``path-2``, ``path-3``, ...: the first that does not exist."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def run(args: argparse.Namespace) -> int:
    from vimtune.engine import build_config, init_distributed, load_recipe  # torch: not for --help
    from vimtune.engine.builder import build_eval_loaders
    from vimtune.engine.evaluate import evaluate
    from vimtune.engine.inference import load_run, load_weights_file
    from vimtune.engine.run_dir import RunFiles

    overrides = overrides_from_args(args)
    loaded: LoadedModel | None = None
    if args.run_dir and args.checkpoint:
        raise ValueError(
            f"give RUN_DIR '{args.run_dir}' or --checkpoint '{args.checkpoint}', not both: RUN_DIR tests the run's "
            f"own weights (--protocol picks which); to test the file with the run's settings use --checkpoint "
            f"{args.checkpoint} --config {Path(args.run_dir) / 'config.yaml'}"
            + (f" (this fine-tuned run's weights are its adapter: --checkpoint {Path(args.run_dir) / 'adapter'})"
               if (Path(args.run_dir) / "adapter").exists() else "")
        )
    if args.run_dir:
        loaded = load_run(args.run_dir, args.protocol, overrides)
        out_dir = Path(args.output_dir) if args.output_dir else RunFiles(Path(args.run_dir)).eval_dir
        cfg, stem = loaded.cfg, loaded.selection.protocol
        if loaded.selection.warning:
            print(loaded.selection.warning, file=sys.stderr)
    elif args.checkpoint:
        cfg = build_config(load_recipe(args.config) if args.config else {}, overrides)
        stem = Path(args.checkpoint).stem
        default = Path("runs") / f"eval-{stem}"
        out_dir = Path(args.output_dir) if args.output_dir else unused_folder(default)
        if out_dir != default and not args.output_dir:
            print(f"'{default}' exists (kept): writing to '{out_dir}'", file=sys.stderr)
    else:
        raise ValueError("give a run folder, or --checkpoint PATH with --model and --data")
    ctx = init_distributed(cfg.train.device)
    loaders, datasets = build_eval_loaders(cfg.data, ["test"], ctx)
    classes = list(datasets["test"].classes)
    if loaded is None:
        loaded = load_weights_file(args.checkpoint, cfg, classes)
    elif classes != loaded.classes:
        raise ValueError(f"the evaluated split's classes {classes[:10]} differ from the model's {loaded.classes[:10]}")
    meter = evaluate(loaded.model.to(ctx.device), loaders["test"], len(classes), ctx, cfg.train.bf16)
    if ctx.is_main:
        _report(meter, loaded, out_dir, stem)
    return 0


def _report(meter: ClassificationMeter, loaded: LoadedModel, out_dir: Path, stem: str) -> None:
    """Print the results and write the JSON and the confusion-matrix PNG."""
    from vimtune.engine.report import format_per_class, write_evaluation

    split = loaded.cfg.data.test_split
    meta = {"split": split, "data": loaded.cfg.data.root}
    if loaded.selection is not None:
        meta |= {"protocol": loaded.selection.protocol, "epoch": loaded.selection.epoch,
                 "weights": str(loaded.selection.weights)}
    json_path, png_path = write_evaluation(meter, loaded.classes, out_dir, f"{stem}_{split}", meta)
    summary = meter.summary()
    which = f"protocol {meta['protocol']} (epoch {meta['epoch']})" if "protocol" in meta else stem
    print(f"{which} on split '{split}' ({summary['count']} images): top-1 {summary['top1']:.2f}%  "
          f"top-{meter.topk} {summary['top5']:.2f}%  loss {summary['loss']:.4f}")
    print(format_per_class(meter, loaded.classes))
    print(f"wrote {json_path} and {png_path}")
    if loaded.selection is not None and loaded.selection.warning:
        print(loaded.selection.warning, file=sys.stderr)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="test a run or a checkpoint: top-1/top-5, per-class accuracy, confusion matrix",
        description=__doc__.split(": ", 1)[1], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run folder written by train/finetune")
    parser.add_argument("--protocol", choices=PROTOCOLS, help="which epoch's weights (default: val, else last)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="instead of a run (not with RUN_DIR): full-model weights (.safetensors/.pth) or an "
                             "adapter folder; --config RUN_DIR/config.yaml gives it a run's settings")
    parser.add_argument("--output-dir", help="where the results go (default: RUN_DIR/eval; with --checkpoint "
                                             "runs/eval-<name>, or runs/eval-<name>-2, -3, ... when it exists: "
                                             "never overwritten)")
    add_config_options(parser)
    parser.add_argument("--model", help="model name (with --checkpoint)")
    parser.add_argument("--backbone-weights", metavar="PATH", help="backbone of an adapter folder")
    parser.add_argument("--data", metavar="ROOT", help="dataset folder (default: the run's)")
    parser.add_argument("--data-kind", choices=DATASET_KINDS)
    parser.add_argument("--split", help="split to evaluate (default: the run's test split)")
    parser.add_argument("--img-size", type=int, help="input side in pixels")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size")
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--device", help="auto, cpu or cuda")
    parser.set_defaults(func=run)
