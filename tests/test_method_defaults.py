"""Each method's default optimiser settings (``vimtune.methods.defaults``) and ``vimtune finetune``'s use of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from vimtune.cli import build_parser
from vimtune.cli._run_options import config_from_args
from vimtune.methods import available_methods
from vimtune.methods.defaults import METHOD_DEFAULTS, method_defaults


def _finetune_config(*argv: str):
    args = build_parser().parse_args(["finetune", *argv])
    return config_from_args(args, finetune=True)


def test_every_method_has_defaults_and_they_follow_the_written_recipes() -> None:
    assert set(METHOD_DEFAULTS) == set(available_methods())
    assert method_defaults("svp").lr == pytest.approx(5e-3 * 96 / 512)  # the release's rate at its batch of 96
    assert method_defaults("full").lr < min(d.lr for m, d in METHOD_DEFAULTS.items() if m != "full")
    assert {method_defaults(m).lr for m in ("linear", "bias", "vpt-deep", "lora", "adapter")} == {1e-3}
    assert method_defaults("svp+lora") == method_defaults("svp")
    with pytest.raises(ValueError, match="no default settings for method 'nope'"):
        method_defaults("nope")


@pytest.mark.parametrize("method", ["svp", "full", "lora"])
def test_finetune_takes_the_method_defaults_when_the_user_gives_none(method: str) -> None:
    optim = _finetune_config("--method", method).optim
    assert (optim.lr, optim.weight_decay, optim.scale_lr, optim.sched) == (
        method_defaults(method).lr, method_defaults(method).weight_decay, False, "cosine")


def test_what_the_user_gives_wins_over_the_method_defaults(tmp_path: Path) -> None:
    assert _finetune_config("--method", "svp", "--lr", "0.02").optim.lr == 0.02
    assert _finetune_config("--method", "svp", "--set", "optim.weight_decay=0.5").optim.weight_decay == 0.5
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {method: full}\noptim: {lr: 0.3}\n")
    optim = _finetune_config("--config", str(recipe)).optim
    assert optim.lr == 0.3 and optim.weight_decay == method_defaults("full").weight_decay
    train = config_from_args(build_parser().parse_args(["train"]))
    assert train.optim.lr != method_defaults("full").lr  # vimtune train keeps the engine's defaults
