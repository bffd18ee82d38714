"""The authors' release files from a Hugging Face cache: timm's ``pretrained=True``, ``hf-hub:`` specs, the CLI.

No network: the cache is laid out as ``huggingface_hub`` writes it (see ``hub_cache.py``) and read
through ``huggingface_hub``'s own code with downloads off.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

from helpers.hub_cache import DEPTH, REVISION, TINY_FILE, TINY_REPO, TINY_STRIDE8_FILE, offline_hub, tiny_release_cache
from helpers.runs import SMOKE, make_vtab_task
from vimtune.cli import main
from vimtune.models import RELEASES, CheckpointError, load_checkpoint, release_spec, resolve_weights

__all__ = ["offline_hub"]  # the fixture, imported for pytest

SRC = Path(__file__).resolve().parents[1] / "src"



def check_pretrained_script(snapshot: Path) -> str:
    """Python code: ``pretrained=True`` loads ``snapshot``'s ``model`` weights; the stride-8 file is refused."""
    return f"""
import json, torch, timm, vimtune
model = timm.create_model("vim_tiny_patch16_224", pretrained=True, depth={DEPTH})
saved = torch.load({str(snapshot)!r}, weights_only=False)["model"]
same = all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
try:
    timm.create_model("vim_tiny_patch16_224", pretrained=True, depth={DEPTH},
                      pretrained_cfg_overlay=dict(hf_hub_filename={TINY_STRIDE8_FILE!r}))
    refused = ""
except Exception as err:
    refused = str(err)
print(json.dumps({{"same": same, "file": model.pretrained_cfg["hf_hub_filename"], "refused": refused}}))
"""


def test_timm_pretrained_reads_the_hub_cache_offline(tmp_path: Path) -> None:
    """``timm.create_model(name, pretrained=True)`` in a fresh process with HF_HUB_CACHE and HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hf-cache"
    tiny_release_cache(cache)
    snapshot = cache / f"models--{TINY_REPO.replace('/', '--')}" / "snapshots" / REVISION / TINY_FILE
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", check_pretrained_script(snapshot)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same"] and result["file"] == TINY_FILE
    assert "stride-8 weights for a stride-16 model" in result["refused"]
    assert "allow_stride_change=True" in result["refused"]


def test_hub_spec_resolves_to_the_cached_file(offline_hub: tuple[Path, dict]) -> None:
    cache, payloads = offline_hub
    spec = release_spec("vim_tiny_patch16_224")
    assert spec == f"hf-hub:{TINY_REPO}/{TINY_FILE}"
    resolved = resolve_weights(spec)
    assert resolved.source == spec
    assert resolved.path == cache / f"models--hustvl--Vim-tiny-midclstok/snapshots/{REVISION}/{TINY_FILE}"
    pinned = resolve_weights(f"hf-hub:{TINY_REPO}@{REVISION}/{TINY_FILE}")
    assert pinned.path.resolve() == resolved.path.resolve()

    model = timm.create_model("vim_tiny_patch16_224", depth=DEPTH, num_classes=10)
    report = load_checkpoint(model, spec)
    assert report.reset_keys == ["head.bias", "head.weight"]  # 1000-class release head, 10-class model
    released = payloads[TINY_FILE]["model"]
    assert torch.equal(model.layers[1].mixer.A_log, released["layers.1.mixer.A_log"])  # "model", not "model_ema"


def test_missing_hub_file_and_bad_spec_are_clear(offline_hub: tuple[Path, dict]) -> None:
    with pytest.raises(FileNotFoundError, match=r"cannot get hf-hub:hustvl/Vim-small-midclstok/.*HF_HUB_OFFLINE"):
        resolve_weights(release_spec("vim_small_patch16_224"))
    with pytest.raises(ValueError, match="expected hf-hub:<owner>/<repo>"):
        resolve_weights("hf-hub:hustvl/vim_t_midclstok_76p1acc.pth")
    with pytest.raises(ValueError, match="vim_nano_patch4_32 has no released weights"):
        release_spec("vim_nano_patch4_32")


def test_stride_mismatch_is_refused_unless_asked(offline_hub: tuple[Path, dict]) -> None:
    stride8 = f"hf-hub:{TINY_REPO}/{TINY_STRIDE8_FILE}"
    stride16 = release_spec("vim_tiny_patch16_224")
    model16 = timm.create_model("vim_tiny_patch16_224", depth=DEPTH)
    with pytest.raises(CheckpointError, match="stride-8 weights for a stride-16 model"):
        load_checkpoint(model16, stride8)
    model8 = timm.create_model("vim_tiny_patch16_stride8_224", depth=DEPTH)
    with pytest.raises(CheckpointError, match="stride-16 weights for a stride-8 model"):
        load_checkpoint(model8, stride16)
    report = load_checkpoint(model16, stride8, allow_stride_change=True)
    assert any("pos_embed resized from grid (27, 27) to (14, 14)" in note for note in report.notes)
    assert any("stride-8 weights loaded into a stride-16 model" in note for note in report.notes)
    load_checkpoint(model8, stride8)  # the matching pair loads as is


def test_finetune_pretrained_records_the_hub_spec(
    offline_hub: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, payloads = offline_hub
    task = make_vtab_task(tmp_path / "task")
    run = tmp_path / "run"
    args = ["finetune", *SMOKE, "--method", "linear", "--model", "vim_tiny_patch16_224", "--pretrained",
            "--set", f"model.kwargs.depth={DEPTH}", "--set", "model.kwargs.embed_dim=192", "--img-size", "16",
            "--data-kind", "vtab", "--data", str(task),
            "--output-dir", str(run), "--epochs", "1", "--batch-size", "4"]
    assert main(args) == 0, capsys.readouterr().err
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["backbone_weights"] == f"hf-hub:{TINY_REPO}/{TINY_FILE}"

    both = ["finetune", "--pretrained", "--backbone-weights", "x.pth"]
    with pytest.raises(SystemExit):
        main(both)
    assert "not allowed with argument" in capsys.readouterr().err
    stride8 = [*args[:-4], "--backbone-weights", f"hf-hub:{TINY_REPO}/{TINY_STRIDE8_FILE}",
               "--output-dir", str(tmp_path / "run8")]
    stride8.remove("--pretrained")
    assert main(stride8) == 1
    err = capsys.readouterr().err
    assert "model.allow_stride_change=true" in err
    assert err.startswith(f"vimtune finetune: error: hf-hub:{TINY_REPO}/{TINY_STRIDE8_FILE} (cached as '")


def test_release_table_matches_the_configs() -> None:
    for name, release in RELEASES.items():
        model = timm.create_model(name, depth=1, num_classes=0)
        assert model.patch_embed.stride == release.stride, name
        assert timm.models.get_pretrained_cfg(name).hf_hub_id == release.hub_id


def test_renamed_release_files_are_recognised_by_their_grid_at_other_sizes(
    offline_hub: tuple[Path, dict], tmp_path: Path
) -> None:
    """A release file under its own name, loaded into a model built for another image size than 224."""
    _, payloads = offline_hub
    own8, own16 = tmp_path / "my_vim_tiny_plus.pth", tmp_path / "my_vim_tiny.pth"
    torch.save(payloads[TINY_STRIDE8_FILE], own8)
    torch.save(payloads[TINY_FILE], own16)
    model16 = timm.create_model("vim_tiny_patch16_224", depth=DEPTH, img_size=384)  # grid 24; the file's is 27
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(own8))}: stride-8 weights for a stride-16 model"):
        load_checkpoint(model16, own8)
    model8 = timm.create_model("vim_tiny_patch16_stride8_224", depth=DEPTH, img_size=256)  # grid 31; the file's 14
    with pytest.raises(CheckpointError, match="stride-16 weights for a stride-8 model"):
        load_checkpoint(model8, own16)
    report = load_checkpoint(model16, own16)  # the same stride at another size is resized as usual
    assert "pos_embed resized from grid (14, 14) to (24, 24)" in report.notes


def test_stride_error_names_the_hub_spec_of_a_cached_file(offline_hub: tuple[Path, dict]) -> None:
    cached = re.escape(f"/snapshots/{REVISION}/{TINY_STRIDE8_FILE}")
    with pytest.raises(CheckpointError, match=rf"^hf-hub:{TINY_REPO}/{TINY_STRIDE8_FILE} \(cached as '.*{cached}'\): "
                                              "stride-8 weights for a stride-16 model"):
        timm.create_model("vim_tiny_patch16_224", pretrained=True, depth=DEPTH,
                          pretrained_cfg_overlay=dict(hf_hub_filename=TINY_STRIDE8_FILE))


def test_a_hub_file_missing_offline_names_repo_file_cache_and_fix(
    offline_hub: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache, _ = offline_hub
    small = RELEASES["vim_small_patch16_224"]  # not in the cache
    expected = [f"cannot get {small.spec} (repository {small.hub_id}, file {small.filename})",
                f"cache folder '{cache}'", "HF_HUB_OFFLINE is set", f"hf download {small.hub_id} {small.filename}",
                "set HF_HUB_CACHE"]
    with pytest.raises(FileNotFoundError) as caught:
        timm.create_model("vim_small_patch16_224", pretrained=True, depth=DEPTH)
    assert "\n" not in str(caught.value)
    assert all(part in str(caught.value) for part in expected), str(caught.value)
    task = make_vtab_task(tmp_path / "task")
    for weights in (["--pretrained"], ["--backbone-weights", small.spec]):
        args = ["finetune", *SMOKE, "--method", "linear", "--model", "vim_small_patch16_224", *weights,
                "--data-kind", "vtab", "--data", str(task), "--output-dir", str(tmp_path / "run"), "--epochs", "1"]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(part in err for part in expected), err
