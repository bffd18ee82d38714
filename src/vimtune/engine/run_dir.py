"""The run folder: where each output goes, and the refusal to overwrite saved work.

``--overwrite`` deletes only a folder that holds a vimtune run, and in it only the run's own
files (:data:`RUN_FILES`, :data:`RUN_DIRS`); anything else in the folder is left alone.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vimtune.engine.run_lock import LOCK_FILE
from vimtune.models.provenance import BACKBONE_FILE

#: Files a run writes at the top of its folder.
RUN_FILES = ("run.json", "config.yaml", "classes.json", "metrics.jsonl", "final_metrics.json", "checkpoint.pt",
             BACKBONE_FILE, "curves.png", "report.html")
#: Folders a run writes (``eval`` by ``vimtune eval``, ``viz`` by ``vimtune report --images``).
RUN_DIRS = ("weights", "adapter", "tensorboard", "eval", "viz")


class RunDirExistsError(RuntimeError):
    """The run folder already holds files and neither resuming nor overwriting was asked for."""


class NotARunDirError(RuntimeError):
    """``--overwrite`` of a folder that does not hold a vimtune run."""


class InputInRunDirError(RuntimeError):
    """``--overwrite`` of a run folder that holds an input of the new run (it would delete its own input)."""


@dataclass(frozen=True)
class RunFiles:
    """Paths inside a run folder ``root``."""

    root: Path

    @property
    def record(self) -> Path:
        """What the run was trained from: the backbone's source and SHA-256 (JSON, written at the start)."""
        return self.root / "run.json"

    @property
    def backbone(self) -> Path:
        """The frozen backbone of a run fine-tuned from a random initialisation (safetensors)."""
        return self.root / BACKBONE_FILE

    @property
    def config(self) -> Path:
        """The configuration used (YAML)."""
        return self.root / "config.yaml"

    @property
    def classes(self) -> Path:
        """Class names, index = label (JSON list)."""
        return self.root / "classes.json"

    @property
    def metrics(self) -> Path:
        """One JSON line per finished epoch."""
        return self.root / "metrics.jsonl"

    @property
    def final_metrics(self) -> Path:
        """Test results of every selection protocol the run supports (JSON)."""
        return self.root / "final_metrics.json"

    @property
    def checkpoint(self) -> Path:
        """Resume state (trainable weights, optimizer, scheduler, EMA, RNG, counters)."""
        return self.root / "checkpoint.pt"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def adapter(self) -> Path:
        """``save_adapter`` export of the final weights (fine-tuning runs)."""
        return self.root / "adapter"

    @property
    def curves(self) -> Path:
        """Loss, accuracy and learning rate against epoch (PNG), redrawn after every epoch."""
        return self.root / "curves.png"

    @property
    def report(self) -> Path:
        """The self-contained HTML report of the run."""
        return self.root / "report.html"

    @property
    def viz_dir(self) -> Path:
        """Pictures of ``vimtune viz`` that ``vimtune report`` embeds."""
        return self.root / "viz"

    @property
    def eval_dir(self) -> Path:
        """Outputs of ``vimtune eval``."""
        return self.root / "eval"

    def read_history(self) -> list[dict[str, Any]]:
        """The per-epoch records of ``metrics.jsonl`` (empty when there is none).

        A torn last line (a write cut short) is left out with a warning.

        Raises:
            ValueError: a line before the last one that is not a JSON record (file and line named).
        """
        if not self.metrics.is_file():
            return []
        lines = [(n, line) for n, line in enumerate(self.metrics.read_text(encoding="utf-8").splitlines(), 1)
                 if line.strip()]
        records = []
        for index, (lineno, line) in enumerate(lines):
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"a {type(record).__name__}, not a record")
            except ValueError as err:
                if index < len(lines) - 1:
                    raise ValueError(f"'{self.metrics}' line {lineno} is not a JSON record ({err})") from None
                warnings.warn(f"'{self.metrics}' line {lineno} is cut short (an interrupted write?); "
                              f"using the {len(records)} complete records before it", stacklevel=2)
                break
            records.append(record)
        return records

    def read_classes(self) -> list[str]:
        """The class names saved at the start of training."""
        if not self.classes.is_file():
            raise FileNotFoundError(f"'{self.root}' is not a run folder: '{self.classes}' is missing")
        return json.loads(self.classes.read_text(encoding="utf-8"))

    def weights(self, which: str) -> Path:
        """Trainable-state safetensors: ``last``, ``best_val`` or ``best_test``."""
        return self.root / "weights" / f"{which}.safetensors"


def _is_atomic_write_leftover(path: Path, owner: Path) -> bool:
    """``path`` is a temporary file :func:`vimtune.engine.checkpoint.atomic_write` left for ``owner``."""
    return path.name.startswith(f".{owner.name}.") and path.name.endswith(".tmp")


def holds_run(root: Path) -> bool:
    """``root`` holds a vimtune run: its ``run.json``, or (older runs) ``config.yaml`` and ``classes.json``."""
    files = RunFiles(root)
    return files.record.is_file() or (files.config.is_file() and files.classes.is_file())


def _is_run_file(path: Path) -> bool:
    """``path`` (in a run folder) is one of the run's own files or folders, or a leftover of one."""
    root = path.parent
    return (path.name in (*RUN_FILES, *RUN_DIRS, LOCK_FILE)
            or any(_is_atomic_write_leftover(path, root / name) for name in RUN_FILES))


def delete_run_files(root: Path) -> list[Path]:
    """Delete the run's own files and folders in ``root`` (the lock file stays); returns what was kept."""
    kept = []
    for path in sorted(root.iterdir()):
        if not _is_run_file(path):
            kept.append(path)
        elif path.name in RUN_DIRS and path.is_dir():
            shutil.rmtree(path)
        elif path.name != LOCK_FILE:
            path.unlink()
    return kept


def remove_write_leftovers(files: RunFiles) -> list[Path]:
    """Delete the temporary files of writes that a killed process never finished; returns them.

    Only safe while holding the run's lock (another process's write in flight looks the same).
    """
    owners = [files.root / name for name in RUN_FILES] + [files.weights(w) for w in ("last", "best_val", "best_test")]
    leftovers = [p for owner in owners if owner.parent.is_dir()
                 for p in owner.parent.glob(f".{owner.name}.*.tmp")]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def _holds_files(root: Path) -> bool:
    return root.is_dir() and any(p.name != LOCK_FILE for p in root.iterdir())


def check_inputs_outside(root: Path, inputs: Mapping[str, str | None]) -> None:
    """Refuse an ``--overwrite`` of ``root`` when one of the new run's ``inputs`` lies inside it.

    Args:
        root: the old run folder that ``--overwrite`` would delete.
        inputs: what each input is (e.g. ``"--data folder"``) -> its local path; ``None`` and
            ``hf-hub:`` specs are skipped.

    Raises:
        InputInRunDirError: the first input found inside ``root`` (or ``root`` itself).
    """
    folder = root.resolve()
    for what, path in inputs.items():
        if path is None or str(path).startswith("hf-hub:"):
            continue
        where = Path(path).resolve()
        if where == folder or folder in where.parents:
            raise InputInRunDirError(
                f"--overwrite refused: the {what} '{path}' lies inside the run folder '{root}' that --overwrite "
                "would delete; move it out of the folder first, or choose another --output-dir"
            )


def prepare_run_dir(path: str | Path, resume: bool, overwrite: bool, create: bool = True,
                    inputs: Mapping[str, str | None] | None = None) -> RunFiles:
    """Check (and with ``create`` make) the run folder ``path``.

    With ``create`` the caller holds the folder's lock (:func:`vimtune.engine.run_lock.run_lock`):
    an ``overwrite`` then deletes the old run's files, and leftovers of interrupted writes go.
    ``inputs`` (what -> path) are the new run's input files and folders: an ``overwrite`` of a
    folder holding one of them is refused (see :func:`check_inputs_outside`).

    Raises:
        RunDirExistsError: ``path`` holds files and neither ``resume`` nor ``overwrite`` is set.
        NotARunDirError: ``overwrite`` or ``resume`` of a folder that holds files but no vimtune run.
        InputInRunDirError: ``overwrite`` of a run folder that holds one of ``inputs``.
        FileNotFoundError: ``resume`` of a folder that does not exist.
    """
    files = RunFiles(Path(path))
    holds_files = _holds_files(files.root)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if resume and not files.root.is_dir():
        raise FileNotFoundError(f"nothing to resume: run folder '{files.root}' does not exist")
    if resume and holds_files and not holds_run(files.root):
        raise NotARunDirError(f"nothing to resume: '{files.root}' holds files but no vimtune run")
    if holds_files and not resume:
        if not overwrite:
            raise RunDirExistsError(
                f"run folder '{files.root}' already exists and holds files; pass --resume to continue "
                "that run, --overwrite to delete it and start over, or choose another --output-dir"
            )
        if not holds_run(files.root):
            raise NotARunDirError(
                f"--overwrite refused: '{files.root}' holds files but no vimtune run (no run.json, or "
                "config.yaml with classes.json); it deletes only run folders. Choose another --output-dir"
            )
        check_inputs_outside(files.root, inputs or {})
        if create:
            kept = delete_run_files(files.root)
            if kept:
                print(f"--overwrite deleted the old run's files in '{files.root}' and kept {len(kept)} entries "
                      f"that are not the run's: {', '.join(p.name for p in kept[:5])}")
    if create:
        (files.root / "weights").mkdir(parents=True, exist_ok=True)
        remove_write_leftovers(files)
    return files
