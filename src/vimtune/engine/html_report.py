"""``report.html``: one self-contained page per run (pictures embedded as base64), readable offline.

Sections: the final metrics under each selection protocol, the training curves, the per-epoch records, the
confusion matrices of ``eval/``, the pictures of ``viz/`` (when ``vimtune viz`` or ``vimtune report --images``
wrote any) and the configuration.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vimtune.engine.checkpoint import atomic_write_text
from vimtune.engine.plots import save_curves_png
from vimtune.engine.run_dir import RunFiles
from vimtune.viz.gate_change import read_gate_change

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .9em; } td, th { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; } pre { background: #f7f7f7; padding: .8em; overflow-x: auto; }
.warning { color: #a40; }
"""
SECTIONS = ("metrics", "curves", "epochs", "confusion", "viz", "config")


def embedded_png(path: Path, caption: str) -> str:
    """A ``<figure>`` holding the PNG at ``path`` as a data URI, with ``caption``."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
            f"<figcaption>{alt}</figcaption></figure>")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """An HTML table of ``rows`` (dicts) over ``columns``; a missing value is an empty cell."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row[c]) if c in row else "<td></td>" for c in columns) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics_section(files: RunFiles) -> str:
    if not files.final_metrics.is_file():
        return "<p>No final metrics yet (the run has not finished).</p>"
    final = json.loads(files.final_metrics.read_text(encoding="utf-8"))
    params = (f"<p>{final.get('epochs', '?')} epochs; trainable parameters "
              f"{final.get('trainable_params', 0):,} of {final.get('total_params', 0):,}.</p>")
    protocols = final.get("protocols", {})
    if not protocols:
        return params + "<p>No test split configured: nothing tested.</p>"
    rows = [{"protocol": name, **result} for name, result in protocols.items()]
    warnings = "".join(f'<p class="warning">{html.escape(r["warning"])}</p>' for r in rows if "warning" in r)
    columns = ["protocol", "epoch", "test_top1", "test_top5", "test_loss", "val_top1", "test_count"]
    return params + html_table(rows, columns) + warnings


def _curves_section(files: RunFiles, history: list[dict[str, Any]]) -> str:
    if history and not files.curves.is_file():
        save_curves_png(history, files.curves, title=files.root.name)
    if not files.curves.is_file():
        return "<p>No epoch has finished yet.</p>"
    return embedded_png(files.curves, "loss, top-1 accuracy (%) and learning rate against epoch")


def _epochs_section(history: list[dict[str, Any]]) -> str:
    if not history:
        return "<p>No epoch has finished yet.</p>"
    columns = list(dict.fromkeys(key for record in history for key in record))
    return html_table(history, columns)


def _pictures(folder: Path, what: str, empty: str) -> str:
    pictures = sorted(folder.glob(f"*{what}.png")) if folder.is_dir() else []
    if not pictures:
        return f"<p>{empty}</p>"
    return "".join(embedded_png(path, path.stem.replace("_", " ")) for path in pictures)


def _gate_change(folder: Path) -> str:
    """The numbers behind ``gates.png`` (``viz/gate_change.json``), when ``vimtune viz`` wrote them."""
    path = folder / "gate_change.json"
    return f"<p>{html.escape(read_gate_change(path).line())}.</p>" if path.is_file() else ""


def _config_section(files: RunFiles) -> str:
    if not files.config.is_file():
        return "<p>No config.yaml.</p>"
    return f"<pre>{html.escape(files.config.read_text(encoding='utf-8'))}</pre>"


def render_report(files: RunFiles) -> str:
    """The report page of run folder ``files`` as one HTML string (every picture embedded)."""
    history = files.read_history()
    title = html.escape(files.root.resolve().name)
    parts = {
        "metrics": ("Final metrics per protocol", _metrics_section(files)),
        "curves": ("Training curves", _curves_section(files, history)),
        "epochs": ("Per-epoch records", _epochs_section(history)),
        "confusion": ("Confusion matrices", _pictures(files.eval_dir, "_confusion",
                                                        "None yet (written when the run tests, or by vimtune eval).")),
        "viz": ("Inside the model", _gate_change(files.viz_dir) + _pictures(
            files.viz_dir, "", "None (make them with vimtune report RUN_DIR --images IMAGE ... or vimtune viz).")),
        "config": ("Configuration", _config_section(files)),
    }
    body = "".join(f'<section id="{key}"><h2>{heading}</h2>{content}</section>'
                   for key, (heading, content) in ((k, parts[k]) for k in SECTIONS))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>vimtune run {title}</title>'
            f"<style>{STYLE}</style></head><body><h1>vimtune run <code>{title}</code></h1>{body}</body></html>\n")


def write_report(files: RunFiles) -> Path:
    """Write ``report.html`` in the run folder (atomically); returns its path."""
    atomic_write_text(files.report, render_report(files))
    return files.report
