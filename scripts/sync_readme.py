"""Copy the committed benchmark results into README.md and the pages under docs/.

Every ``<!-- include: PATH -->`` ... ``<!-- /include -->`` block is replaced by the current text of
PATH (relative to the repository root), so the tables shown are always those that the benchmark
commands wrote. ``<!-- include: PATH#HEADING -->`` takes only the part of PATH under the bold line
``**HEADING**``, up to the next bold heading line (the result files use bold lines as headings), or the
paragraph that starts with HEADING, so the README's first screen can show one table of a long result file.
Every ``<!-- generated: NAME -->`` ... ``<!-- /generated -->`` block is replaced by the text that the code
in ``GENERATORS[NAME]`` writes (docs/models.md's model zoo, docs/methods.md's parameter counts, the
table of issue #17's CPU targets and docs/backends.md's MKL / oneDNN times, computed from the committed
result files).
``--check`` only reports blocks that are out of date (exit 1).

    python scripts/sync_readme.py            # rewrite README.md and docs/*.md
    python scripts/sync_readme.py --check    # exit 1 if a block differs from its file
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(
    r"(<!-- include: (?P<path>[^\s#]+)(?:#(?P<heading>[^>]+?))? -->\n)(?P<body>.*?)(<!-- /include -->)", re.DOTALL
)
HEADING_LINE = re.compile(r"^\*\*[^*].*\*\*$")
GENERATED = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.DOTALL)


def model_zoo() -> str:
    """docs/models.md's zoo table: what ``vimtune info`` prints, from each config's ``pretrained_cfg``."""
    return importlib.import_module("vimtune.models.zoo_table").zoo_markdown()


def methods_on_vim_small() -> str:
    """docs/methods.md's table: ``vimtune methods --model vim_small_patch16_224 --num-classes 10``."""
    methods = importlib.import_module("vimtune.methods")
    table = importlib.import_module("vimtune.cli.methods").methods_markdown
    return table("vim_small_patch16_224", 10, methods.available_methods())


def cpu_targets() -> str:
    """The README's and docs/cpu-benchmarks.md's table of issue #17's targets: ``vimtune bench targets``."""
    return importlib.import_module("vimtune.bench.targets").targets_markdown(ROOT / "benchmarks" / "results")


ZEN5 = "amd-epyc-family26-model2-avx512-bf16"  # the CPU tag of the Zen 5 result files


def cpu_linears() -> str:
    """docs/backends.md's table of float32 times with MKL's and oneDNN's linears, from the Zen 5 result files."""
    table = importlib.import_module("vimtune.bench.linears_table").linears_markdown
    return table(ROOT / "benchmarks" / "results", ZEN5)


# generated block name -> the function writing its markdown
GENERATORS = {"model-zoo": model_zoo, "methods-vim-small": methods_on_vim_small, "cpu-targets": cpu_targets,
              "cpu-linears-zen5": cpu_linears}


def section(text: str, heading: str, source: str) -> str:
    """The part of ``text`` that ``heading`` names (stripped of blank lines around it).

    Under a bold heading line ``**heading**``: the lines after it, up to the next bold heading line.
    Else the paragraph (up to the next blank line) whose first line starts with ``heading``.
    """
    lines = text.splitlines()
    marker = f"**{heading}**"
    if marker in lines:
        start = lines.index(marker) + 1
        end = next((i for i in range(start, len(lines)) if HEADING_LINE.match(lines[i])), len(lines))
    else:
        start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
        if start is None:
            raise ValueError(f"{source} has no heading line {marker!r} and no paragraph starting {heading!r}")
        end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end]).strip("\n")


def synced(page: str, root: Path = ROOT) -> str:
    """``page`` with every include block's body replaced by its file's text (or the named section of it) and
    every generated block's by its generator's text."""

    def replace(match: re.Match[str]) -> str:
        path = root / match["path"]
        if not path.is_file():
            raise FileNotFoundError(f"a page includes {match['path']}, which does not exist under {root}")
        text = path.read_text().rstrip("\n")
        if match["heading"]:
            text = section(text, match["heading"].strip(), match["path"])
        return match.group(1) + text + "\n" + match.group(5)

    return GENERATED.sub(generate, BLOCK.sub(replace, page))


def generate(match: re.Match[str]) -> str:
    """The generated block of ``match`` with its body written by its generator."""
    if match["name"] not in GENERATORS:
        raise ValueError(f"a page has a generated block {match['name']!r}; known: {', '.join(GENERATORS)}")
    text = GENERATORS[match["name"]]().rstrip("\n")
    return match.group(1) + text + "\n" + match.group(4)


def pages(root: Path = ROOT) -> list[Path]:
    """README.md and every markdown page under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 when a page is out of date")
    args = parser.parse_args()
    stale = []
    for page_path in pages():
        page = page_path.read_text()
        new = synced(page)
        if new == page:
            continue
        stale.append(str(page_path.relative_to(ROOT)))
        if not args.check:
            page_path.write_text(new)
    if args.check:
        print("every page is up to date" if not stale else f"out of date: {', '.join(stale)}")
        return 1 if stale else 0
    print(f"rewrote: {', '.join(stale)}" if stale else "every page was up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
