"""Bundled training recipes (``vimtune/configs/*.yaml``) and ``--config NAME-or-PATH`` lookup."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from vimtune.engine.config import read_yaml


def available_recipes() -> list[str]:
    """Names of the recipes shipped with the package (``smoke``, ``svp_vtab``...)."""
    folder = resources.files("vimtune") / "configs"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_path(name_or_path: str) -> Path:
    """Resolve a recipe: an existing file path, else a bundled name (with or without ``.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml")
    bundled = Path(str(resources.files("vimtune") / "configs" / f"{name}.yaml"))
    if path.parent == Path(".") and bundled.is_file():
        return bundled
    raise FileNotFoundError(
        f"config '{name_or_path}' is neither a file nor a bundled recipe; "
        f"bundled recipes: {', '.join(available_recipes())}"
    )


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """The YAML mapping of a recipe file or bundled recipe name."""
    return read_yaml(recipe_path(name_or_path))
