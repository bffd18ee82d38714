"""Copy the committed benchmark results into README.md.

Every ``<!-- include: PATH -->`` ... ``<!-- /include -->`` block of the README is replaced by the
current text of PATH (relative to the repository root), so the README's tables are always those
that the benchmark commands wrote. ``--check`` only reports blocks that are out of date (exit 1).

    python scripts/sync_readme.py            # rewrite README.md
    python scripts/sync_readme.py --check    # exit 1 if a block differs from its file
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- include: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /include -->)", re.DOTALL)


def synced(readme: str, root: Path = ROOT) -> str:
    """``readme`` with every include block's body replaced by its file's text."""

    def replace(match: re.Match[str]) -> str:
        path = root / match["path"]
        if not path.is_file():
            raise FileNotFoundError(f"README includes {match['path']}, which does not exist under {root}")
        return match.group(1) + path.read_text().rstrip("\n") + "\n" + match.group(4)

    return BLOCK.sub(replace, readme)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 when README.md is out of date")
    args = parser.parse_args()
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    new = synced(readme)
    if args.check:
        pairs = zip(BLOCK.finditer(readme), BLOCK.finditer(new), strict=True)
        stale = [old["path"] for old, fresh in pairs if old["body"] != fresh["body"]]
        print("README.md is up to date" if not stale else f"README.md is out of date for: {', '.join(stale)}")
        return 1 if stale else 0
    readme_path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
