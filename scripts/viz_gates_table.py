"""Gather the gate-change records of ``vimtune viz`` runs into the committed results file the docs include.

    python scripts/viz_gates_table.py OUT.md RUN_VIZ/gate_change.json [...] --command "how OUT.md was made"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vimtune.cpuinfo import cpu_model_name
from vimtune.engine.checkpoint import atomic_write_text
from vimtune.viz.gate_change import gate_table, read_gate_change

HEADING = "Gate change by sequence quarter"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the markdown file to write")
    parser.add_argument("records", nargs="+", type=Path, help="gate_change.json files written by vimtune viz")
    parser.add_argument("--command", required=True, help="the command that regenerates OUT (written into it)")
    args = parser.parse_args()
    changes = [read_gate_change(path) for path in args.records]
    first = changes[0]
    text = (f"# How much each method moves the selective gate, along the sequence\n\n"
            f"Written by `{args.command}` from the `viz/gate_change.json` of each run (`vimtune report --images`). "
            f"Mean of |delta(method) - delta(plain backbone)| over {first.layers} layers, both scan directions "
            f"(delta averaged over channels and {first.images} images), in the first and in the last quarter of the "
            f"{first.tokens} patch tokens in sequence order. Trained and measured on CPU ({cpu_model_name()}, a shared "
            f"machine: the load changes no number here).\n\n**{HEADING}**\n\n{gate_table(changes)}\n")
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
