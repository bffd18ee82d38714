"""The README's and docs pages' benchmark tables are the committed result files (scripts/sync_readme.py)."""

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


@pytest.mark.parametrize("page", _sync_module().pages(), ids=lambda p: p.name)
def test_page_tables_match_result_files(page: Path) -> None:
    text = page.read_text()
    assert _sync_module().synced(text) == text, f"{page.name} is stale: run python scripts/sync_readme.py"


def test_readme_shows_a_committed_result_table() -> None:
    assert "<!-- include: benchmarks/results/" in (ROOT / "README.md").read_text()


def test_sync_replaces_a_stale_block_and_names_missing_files(tmp_path: Path) -> None:
    sync = _sync_module()
    (tmp_path / "table.md").write_text("| a |\n|---|\n| 2 |\n")
    stale = "intro\n<!-- include: table.md -->\n| a |\n|---|\n| 1 |\n<!-- /include -->\nafter\n"
    fresh = stale.replace("| 1 |", "| 2 |")
    assert sync.synced(stale, tmp_path) == fresh
    with pytest.raises(FileNotFoundError, match="missing.md"):
        sync.synced("<!-- include: missing.md -->\n<!-- /include -->", tmp_path)


def test_section_include_takes_one_bold_heading_up_to_the_next(tmp_path: Path) -> None:
    sync = _sync_module()
    (tmp_path / "r.md").write_text("intro\n\n**First**\n\n| a |\n| 1 |\n\n**Second**\n\n| b |\n")
    page = "<!-- include: r.md#First -->\nold\n<!-- /include -->\n"
    assert sync.synced(page, tmp_path) == "<!-- include: r.md#First -->\n| a |\n| 1 |\n<!-- /include -->\n"
    last = "<!-- include: r.md#Second -->\n<!-- /include -->"
    assert sync.synced(last, tmp_path) == "<!-- include: r.md#Second -->\n| b |\n<!-- /include -->"
    with pytest.raises(ValueError, match="Third"):
        sync.synced("<!-- include: r.md#Third -->\n<!-- /include -->", tmp_path)


def test_section_include_falls_back_to_the_paragraph_starting_with_the_heading(tmp_path: Path) -> None:
    sync = _sync_module()
    (tmp_path / "r.md").write_text("| t |\n\nCrossover: at 640 px\nand more.\n\nnext paragraph\n")
    page = "<!-- include: r.md#Crossover -->\n<!-- /include -->"
    expected = "<!-- include: r.md#Crossover -->\nCrossover: at 640 px\nand more.\n<!-- /include -->"
    assert sync.synced(page, tmp_path) == expected


def test_model_zoo_table_is_generated_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/models.md's zoo table shows every config's ``pretrained_cfg`` Hub id and file, and goes stale
    (the page test above fails) as soon as a config's ``pretrained_cfg`` changes."""
    from timm.models import get_pretrained_cfg

    import vimtune.models.zoo_table as zoo_table
    from vimtune.models.zoo import MODEL_CONFIGS

    page = (ROOT / "docs" / "models.md").read_text()
    assert "<!-- generated: model-zoo -->" in page
    rows = {line.split("|")[1].strip(" `"): line for line in page.splitlines() if line.startswith("| `vim_")}
    assert set(rows) == set(MODEL_CONFIGS)
    for name in MODEL_CONFIGS:
        cfg = get_pretrained_cfg(name)
        for value in (cfg.hf_hub_id, cfg.hf_hub_filename):
            assert value is None or f"`{value}`" in rows[name], (name, value)
    assert "`hustvl/Vim-small-midclstok` | `vim_s_midclstok_ft_81p6acc.pth`" in rows["vim_small_patch16_stride8_224"]

    def moved(name: str):
        cfg = get_pretrained_cfg(name)
        if cfg.hf_hub_filename:
            cfg.hf_hub_filename = cfg.hf_hub_filename.replace(".pth", ".safetensors")
        return cfg

    monkeypatch.setattr(zoo_table, "get_pretrained_cfg", moved)
    assert _sync_module().synced(page) != page
    with pytest.raises(ValueError, match="no-such-table"):
        _sync_module().synced("<!-- generated: no-such-table -->\n<!-- /generated -->")
