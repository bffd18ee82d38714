"""The transfer grid: (task, method, seed) cells, run through the shared protocol and cached in the JSON.

A finished cell is stored in the results JSON under ``"task/method/seed"`` and never run again
while the file's fingerprint (protocol + backbone) is unchanged. A cell interrupted mid-run
resumes from its engine run folder (``WORK_DIR/<fingerprint>/<task>/<method>-s<seed>``).
Several processes may fill one file at once (e.g. one per ``--tasks`` subset): every save merges
the cells already on disk under an exclusive lock, so none is lost; a cell that another process
finished is skipped, and so is one that another process is running (each running cell holds an OS
lock, ``OUT.json.claims/<cell>.lock``, that dies with its process: a killed run leaves no stale claim).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vimtune.data import VTAB_SPLIT_FILES
from vimtune.demo import Protocol, ResolvedBackbone, run_cell
from vimtune.engine.checkpoint import atomic_write_text

Cell = tuple[str, str, int]


def cell_key(task: str, method: str, seed: int) -> str:
    """The JSON key of a cell: ``"task/method/seed"``."""
    return f"{task}/{method}/{seed}"


def fingerprint(protocol: dict[str, Any], backbone: ResolvedBackbone) -> str:
    """A short hash of everything a cached cell must share with the current run.

    ``protocol``: what defines the protocol (e.g. :meth:`Protocol.identity`).
    """
    identity = {"protocol": protocol, "backbone": backbone.describe()}
    identity["backbone"].pop("weights")  # the file's hash identifies it, wherever it lies
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def discover_tasks(data_root: Path) -> list[str]:
    """The task folders of ``data_root``: sub-folders holding the train, val and test list files."""
    needed = [VTAB_SPLIT_FILES[s] for s in ("train", "val", "test")]
    if not data_root.is_dir():
        raise FileNotFoundError(f"VTAB data root '{data_root}' does not exist (give --data-root)")
    tasks = sorted(d.name for d in data_root.iterdir() if d.is_dir() and all((d / f).is_file() for f in needed))
    if not tasks:
        raise FileNotFoundError(f"no VTAB-layout task folders ({', '.join(needed)}) in '{data_root}'")
    return tasks


@dataclass
class ResultsFile:
    """The results JSON: a header (fingerprint, protocol, backbone, ...) and the finished cells."""

    path: Path
    header: dict[str, Any]
    cells: dict[str, dict[str, Any]]

    @classmethod
    def open(cls, path: Path, header: dict[str, Any], fresh: bool) -> ResultsFile:
        """The cached cells of ``path`` when its fingerprint matches ``header``'s (none with ``fresh``).

        Raises:
            ValueError: the file holds results of another protocol or backbone (the message
                shows both), and ``fresh`` was not given.
        """
        if fresh:
            path.unlink(missing_ok=True)  # or a later save would merge its cells back
        if not path.is_file():
            return cls(path, header, {})
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("fingerprint") != header["fingerprint"]:
            theirs = {k: data.get(k) for k in ("protocol", "backbone")}
            ours = {k: header[k] for k in ("protocol", "backbone")}
            raise ValueError(
                f"'{path}' holds results of another protocol or backbone:\n  file: {json.dumps(theirs)}\n"
                f"  now:  {json.dumps(ours)}\nuse --fresh to replace them, or --out for another file")
        return cls(path, header, data.get("cells", {}))

    @contextlib.contextmanager
    def _merged(self) -> Iterator[None]:
        """Holds the file's lock with the cells on disk merged in (this process's own win on a clash).

        Cells on disk are merged only while the file's fingerprint is this one's (a ``--fresh`` run
        replaces a file of another protocol or backbone).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if self.path.is_file():
                on_disk = json.loads(self.path.read_text(encoding="utf-8"))
                if on_disk.get("fingerprint") == self.header["fingerprint"]:
                    self.cells = {**on_disk.get("cells", {}), **self.cells}
            yield

    @contextlib.contextmanager
    def claim(self, key: str, wait: bool = False) -> Iterator[bool]:
        """Holds an OS lock on cell ``key`` for the block; yields whether this process got it.

        Without ``wait`` the answer is immediate (``False``: another process is running the cell);
        with ``wait`` it blocks until the other process lets go (finished or died). The lock is
        released when the block ends or the process dies, whatever the way.
        """
        folder = self.path.with_name(self.path.name + ".claims")
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / (key.replace("/", "~") + ".lock"), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True

    def add(self, key: str, record: dict[str, Any]) -> None:
        """Store a finished cell, stamped with the machine of this file's header (the one it ran on), and save."""
        self.cells[key] = {**record, "machine": self.header.get("machine")}
        self.save()

    def refresh(self) -> None:
        """Add the cells other processes saved since this one opened or saved the file."""
        with self._merged():
            pass

    def save(self) -> None:
        """Write the header and cells atomically, first adding the cells another process saved meanwhile."""
        with self._merged():
            atomic_write_text(self.path, json.dumps({**self.header, "cells": self.cells}, indent=1))


@dataclass
class Grid:
    """Runs cells with one protocol and backbone, caching each finished cell in ``results``."""

    data_root: Path
    work_dir: Path
    protocol: Protocol
    backbone: ResolvedBackbone
    results: ResultsFile
    log: Callable[[str], None] = print

    def run(self, cells: Iterable[Cell]) -> None:
        """Run every cell not cached yet, saving the results file after each one.

        Each cell is claimed first (:meth:`ResultsFile.claim`) and the file read again, so a cell
        that another process finished or is running is skipped (processes that share a file
        should walk the cells in different orders).
        """
        todo = [c for c in cells if cell_key(*c) not in self.results.cells]
        root = self.work_dir / self.results.header["fingerprint"]
        for n, (task, method, seed) in enumerate(todo, 1):
            key, name = cell_key(task, method, seed), f"[{n}/{len(todo)}] {task} / {method} / seed {seed}"
            with self.results.claim(key) as mine:
                self.results.refresh()
                if key in self.results.cells or not mine:
                    self.log(f"{name}: {'finished' if mine else 'being run'} by another process")
                    continue
                run_dir = root / task / f"{method}-s{seed}"
                self.log(f"{name} -> {run_dir}")
                record = run_cell(self.data_root / task, run_dir, method, seed, self.protocol, self.backbone,
                                  root / "heads", resume=run_dir.is_dir())
                self.results.add(key, {**record, "run_dir": str(run_dir)})
            self.log(f"  done in {record['seconds']:.0f} s: "
                     + ", ".join(f"{p} test {r['test_acc']:.3f}" for p, r in record["protocols"].items()))
