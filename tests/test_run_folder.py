"""The run folder under faults: --overwrite of foreign folders, two processes on one run, leftovers of
killed writes, a failed resume with new settings, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import vimtune.engine.runner as runner
from helpers.runs import SMOKE, checksums, make_image_folder, vimtune_cmd
from vimtune.cli import main
from vimtune.engine import load_checkpoint_state
from vimtune.engine.run_lock import run_lock


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data", {"train": 4, "val": 2, "test": 2})


def _train(data: Path, run: Path, *extra: str) -> int:
    return main(["train", *SMOKE, "--data", str(data), "--output-dir", str(run), "--epochs", "1", *extra])


def test_overwrite_refuses_a_folder_without_a_run(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = checksums(data)
    assert _train(data, data, "--overwrite") == 1  # --data D --output-dir D --overwrite
    err = capsys.readouterr().err
    assert f"--overwrite refused: '{data}' holds files but no vimtune run" in err
    assert checksums(data) == before


def test_overwrite_deletes_only_the_runs_own_files(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _train(data, run) == 0
    (run / "notes.txt").write_text("mine")
    (run / "extra").mkdir()
    (run / "extra" / "keep.png").write_bytes(b"png")
    (run / "eval").mkdir(exist_ok=True)  # the end-of-run test already wrote its evaluation there
    (run / "eval" / "old.json").write_text("{}")
    assert _train(data, run, "--overwrite", "--set", "train.seed=1") == 0
    assert "kept 2 entries that are not the run's: extra, notes.txt" in capsys.readouterr().out
    assert (run / "notes.txt").read_text() == "mine" and (run / "extra" / "keep.png").read_bytes() == b"png"
    assert not (run / "eval" / "old.json").exists()  # the old run's evaluation went with it
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 1


def test_leftovers_of_killed_writes_are_removed_at_the_next_start(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(data, run) == 0
    leftovers = [run / ".checkpoint.pt.k1l2e3d4.tmp", run / ".metrics.jsonl.abcdefgh.tmp",
                 run / "weights" / ".last.safetensors.x7y8z9w0.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    (run / ".user-notes.tmp").write_text("not the run's")
    assert main(["train", "--output-dir", str(run), "--resume", "--epochs", "2"]) == 0
    assert not any(p.exists() for p in leftovers)
    assert (run / ".user-notes.tmp").exists()


def test_failed_resume_keeps_the_config_until_an_epoch_finishes(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _train(data, run) == 0
    before = (run / "config.yaml").read_bytes()

    def nan_model(*args, **kwargs):
        model, trainable = attach_method(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, out: out * float("nan") if module.training else out)
        return model, trainable

    attach_method = runner.attach_method
    with monkeypatch.context() as patch:
        patch.setattr(runner, "attach_method", nan_model)  # the new lr diverges at once
        assert main(["train", "--output-dir", str(run), "--resume", "--epochs", "3", "--lr", "1e6"]) == 1
    assert "training loss is nan" in capsys.readouterr().err
    assert (run / "config.yaml").read_bytes() == before

    assert main(["train", "--output-dir", str(run), "--resume", "--epochs", "2", "--lr", "2e-3"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["train"]["epochs"], saved["optim"]["lr"]) == (2, 2e-3)
    assert load_checkpoint_state(run / "checkpoint.pt")["config"] == saved


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_training(data: Path, run: Path, log: Path, epochs: int = 200) -> subprocess.Popen[bytes]:
    """``vimtune train`` in a subprocess, returned once its first checkpoint exists."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = vimtune_cmd("train", *SMOKE, "--data", str(data), "--output-dir", str(run), "--epochs", str(epochs),
                      "--batch-size", "2")
    # Ctrl-C's SIGINT must reach Python's handler even when pytest itself runs as a background job of a
    # non-interactive shell (`pytest &`): such a job starts with SIGINT ignored, its children inherit
    # that, and Python then installs no KeyboardInterrupt handler (the run would ignore the signal).
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            preexec_fn=_default_sigint)
    deadline = time.monotonic() + 600  # a fresh process may first wait for the CPU kernels' JIT build
    while not (run / "checkpoint.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training exited or hung before its first checkpoint: {log.read_text()}")
        time.sleep(0.02)
    return proc


def test_a_second_process_on_a_run_is_refused_and_a_killed_one_leaves_no_lock(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    first = _start_training(data, run, tmp_path / "first.log")  # one process; this test's is the second
    try:
        for second in (["train", "--output-dir", str(run), "--resume"],
                       ["train", *SMOKE, "--data", str(data), "--output-dir", str(run), "--overwrite"]):
            assert main(second) == 1
            assert first.poll() is None, "the first run ended before the second process was tried"
            err = capsys.readouterr().err
            assert f"run folder '{run}' is in use by another vimtune process" in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done = load_checkpoint_state(run / "checkpoint.pt")["epoch"]
    assert main(["train", "--output-dir", str(run), "--resume", "--epochs", str(done + 1)]) == 0  # no stale lock
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, done + 2))  # one trajectory, no interleaving


HOLD_LOCK_THEN_DIE = """
import os, sys, time
from pathlib import Path
from vimtune.engine.run_lock import run_lock
with run_lock(Path(sys.argv[1])):
    if os.fork() == 0:  # a data-loader worker that outlives its killed parent
        time.sleep(30)
        os._exit(0)
    os._exit(0)  # dies holding the lock, like kill -9
"""


def test_a_forked_worker_that_outlives_a_killed_run_does_not_hold_its_lock(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", HOLD_LOCK_THEN_DIE, str(tmp_path)], check=True, timeout=60)
    with run_lock(tmp_path):  # the orphaned child is still sleeping
        pass


def test_ctrl_c_prints_one_line_naming_the_checkpoint(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _start_training(data, run, tmp_path / "train.log")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    lines = (tmp_path / "train.log").read_text().strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    assert lines[-1].startswith(f"vimtune train: interrupted: the last checkpoint is '{run / 'checkpoint.pt'}' (")
    assert lines[-1].endswith(f"continue with --output-dir {run} --resume")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, run): a finished one-epoch run; tests that change it take a copy (:func:`run_copy`)."""
    root = tmp_path_factory.mktemp("finished")
    data = make_image_folder(root / "data", {"train": 4, "val": 2, "test": 2})
    assert _train(data, root / "run") == 0
    return data, root / "run"


@pytest.fixture
def run_copy(finished_run: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    data, run = finished_run
    return data, Path(shutil.copytree(run, tmp_path / "run"))


def test_overwrite_refuses_to_delete_an_input_of_the_new_run(
    run_copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = run_copy
    weights = run / "weights" / "last.safetensors"  # a run file: --overwrite deletes it
    before = checksums(run)
    finetune = ["finetune", *SMOKE, "--method", "linear", "--data", str(data), "--output-dir", str(run),
                "--backbone-weights", str(weights), "--overwrite"]
    assert main(finetune) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (f"--overwrite refused: the --backbone-weights file '{weights}' lies inside the run folder '{run}'"
            in err)
    assert checksums(run) == before
    shutil.copytree(data, run / "mydata")
    before = checksums(run)
    assert _train(run / "mydata", run, "--overwrite") == 1
    assert f"the --data folder '{run / 'mydata'}' lies inside the run folder '{run}'" in capsys.readouterr().err
    assert checksums(run) == before


def test_eval_refuses_a_run_folder_with_a_checkpoint_file(
    finished_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = finished_run
    weights = run / "weights" / "last.safetensors"
    out = tmp_path / "eval"
    assert main(["eval", str(run), "--checkpoint", str(weights), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"give RUN_DIR '{run}' or --checkpoint '{weights}', not both" in err
    assert not out.exists()
    suggested = ["eval", "--checkpoint", str(weights), "--config", str(run / "config.yaml"), "--output-dir", str(out)]
    assert main(suggested) == 0  # what the message suggests works
    assert (out / "last_test.json").is_file()


def test_resume_without_epochs_left_says_nothing_will_be_trained(
    run_copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = run_copy
    records = (run / "metrics.jsonl").read_text()
    assert main(["train", "--output-dir", str(run), "--resume", "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert (f"nothing to train: run '{run}' is at epoch 1 and train.epochs is 1; only its final test and "
            "report are redone (pass --epochs above 1 to train more)") in err.splitlines()
    assert (run / "metrics.jsonl").read_text() == records


def test_eval_and_predict_refuse_a_run_a_live_process_is_training(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    image = next((data / "test").rglob("*.png"))
    training = _start_training(data, run, tmp_path / "train.log")
    try:
        for command in (["eval", str(run), "--output-dir", str(tmp_path / "eval")], ["predict", str(run), str(image)]):
            assert main(command) == 1
            assert training.poll() is None, "the training ended before eval/predict were tried"
            err = capsys.readouterr().err
            assert err.count("\n") == 1
            assert f"run folder '{run}' is being trained by a live vimtune process" in err
    finally:
        training.send_signal(signal.SIGKILL)
        training.wait()
    assert main(["predict", str(run), str(image)]) == 0  # the killed run's lock went with it
