"""``vimtune convert``: turn a foreign checkpoint into a vimtune adapter directory."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from vimtune.methods import import_svp_release, save_adapter
    from vimtune.models.provenance import weights_record

    model, method = import_svp_release(
        args.input, backbone=args.backbone, group_size=args.group_size, rank=args.rank,
        num_classes=args.num_classes, simam=args.simam,
    )
    weights = None
    if args.backbone_weights_out:
        trained = set(method.trainable_state(model))
        backbone = {k: v.contiguous() for k, v in model.state_dict().items() if k not in trained}
        save_file(backbone, args.backbone_weights_out)
        weights = weights_record(args.backbone_weights_out, args.backbone_weights_out)
        print(f"wrote backbone weights (head and prompts left out) to {args.backbone_weights_out}")
    directory = save_adapter(model, method, args.output,
                             backbone={"name": args.backbone, "kwargs": {}, "weights": weights})
    counts = method.describe(model)
    print(f"wrote {directory}: {method.name} ({method.options.variant} variant, group size "
          f"{method.options.group_size}), {counts['trainable']:,} trained parameters, {model.num_classes} classes")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a checkpoint of the SVP release into a vimtune adapter directory",
        description="Read a checkpoint of the SVP authors' release (.pth, read safely) and write "
                    "adapter.safetensors + adapter.json (svp, release variant) to OUT.",
    )
    parser.add_argument("--from", dest="source", choices=["svp-release"], required=True,
                        help="format of IN")
    parser.add_argument("input", metavar="IN", help="checkpoint file")
    parser.add_argument("output", metavar="OUT", help="adapter directory to write")
    parser.add_argument("--backbone", default="vim_small_patch16_224", help="timm name of the backbone config")
    parser.add_argument("--group-size", type=int, default=None,
                        help="s the checkpoint was trained with (default: inferred from its cross-prompter count)")
    parser.add_argument("--rank", type=int, default=64, help="r of the inner prompters")
    parser.add_argument("--num-classes", type=int, default=None, help="default: read from the checkpoint's head")
    parser.add_argument("--simam", action="store_true", help="the run used SimAM on the input (CIFAR, Flowers)")
    parser.add_argument("--backbone-weights-out", metavar="FILE",
                        help="also write the checkpoint's backbone weights as .safetensors and record them (source, "
                             "SHA-256) in adapter.json, so load_adapter finds and checks them")
    parser.set_defaults(func=run)
