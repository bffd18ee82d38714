"""The README's benchmark tables are the committed result files (scripts/sync_readme.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _sync_module():
    spec = importlib.util.spec_from_file_location("sync_readme", ROOT / "scripts" / "sync_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_result_files() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "<!-- include: benchmarks/results/" in readme
    assert _sync_module().synced(readme) == readme, "run: python scripts/sync_readme.py"


def test_sync_replaces_a_stale_block_and_names_missing_files(tmp_path: Path) -> None:
    sync = _sync_module()
    (tmp_path / "table.md").write_text("| a |\n|---|\n| 2 |\n")
    stale = "intro\n<!-- include: table.md -->\n| a |\n|---|\n| 1 |\n<!-- /include -->\nafter\n"
    fresh = stale.replace("| 1 |", "| 2 |")
    assert sync.synced(stale, tmp_path) == fresh
    with pytest.raises(FileNotFoundError, match="missing.md"):
        sync.synced("<!-- include: missing.md -->\n<!-- /include -->", tmp_path)
