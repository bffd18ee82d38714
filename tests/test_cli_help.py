"""Every training / evaluation sub-command answers ``--help``."""

from __future__ import annotations

import pytest

from vimtune.cli import main


@pytest.mark.parametrize(("command", "expected"), [
    ("train", "--resume"),
    ("finetune", "--backbone-weights"),
    ("eval", "best-test"),
    ("predict", "--topk"),
])
def test_help(command: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert expected in capsys.readouterr().out


def test_train_refuses_a_method_and_finetune_needs_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", "smoke", "--set", "model.method=svp"]) == 1
    assert "use vimtune finetune" in capsys.readouterr().err
    assert main(["finetune", "--config", "smoke"]) == 1
    assert "needs a method" in capsys.readouterr().err
    assert main(["eval"]) == 1
    assert "give a run folder" in capsys.readouterr().err
