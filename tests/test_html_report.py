"""``report.html``: every section, every picture embedded, readable offline; rendered by a real headless browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from vimtune.cli import main
from vimtune.engine.html_report import SECTIONS, render_report
from vimtune.engine.plots import save_confusion_png, save_curves_png
from vimtune.engine.run_dir import RunFiles

IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def fake_run(root: Path, with_viz: bool = True) -> RunFiles:
    """A finished run folder: config, per-epoch records, final metrics, curves, a confusion matrix, a viz picture."""
    files = RunFiles(root)
    (root / "eval").mkdir(parents=True)
    files.config.write_text("name: demo\nmodel:\n  name: vim_micro_patch4_32\n  method: svp\n")
    history = [{"epoch": e, "lr": 1e-3, "train_loss": 1.0 / e, "train_top1": 50.0 + e, "val_top1": 40.0 + 5 * e,
                "val_loss": 1.2 / e} for e in (1, 2, 3)]
    files.metrics.write_text("".join(json.dumps(r) + "\n" for r in history))
    files.final_metrics.write_text(json.dumps({"epochs": 3, "trainable_params": 1234, "total_params": 99999,
        "protocols": {"val": {"epoch": 3, "test_top1": 61.25, "test_top5": 90.0, "test_loss": 0.9,
                              "test_count": 40, "val_top1": 55.0},
                      "last": {"epoch": 3, "test_top1": 61.25, "test_top5": 90.0, "test_loss": 0.9,
                               "test_count": 40}}}))
    save_curves_png(history, files.curves)
    save_confusion_png(torch.tensor([[5, 1], [2, 7]]), ["cat", "dog"], files.eval_dir / "val_test_confusion.png")
    if with_viz:
        files.viz_dir.mkdir()
        shutil.copy(files.curves, files.viz_dir / "attention.png")
    return files


def test_the_report_holds_every_section_and_embeds_every_picture(tmp_path: Path) -> None:
    files = fake_run(tmp_path / "run")
    page = render_report(files)
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "61.25" in page and "1,234" in page and "vim_micro_patch4_32" in page  # metrics and config
    embedded = [base64.b64decode(data) for data in IMG.findall(page)]
    on_disk = [files.curves, files.eval_dir / "val_test_confusion.png", files.viz_dir / "attention.png"]
    assert sorted(embedded) == sorted(p.read_bytes() for p in on_disk)
    assert "src=\"http" not in page and "src=\"file" not in page  # nothing to fetch: readable offline


def test_vimtune_report_writes_report_html_and_redraws_missing_curves(tmp_path: Path) -> None:
    files = fake_run(tmp_path / "run", with_viz=False)
    files.curves.unlink()
    assert main(["report", str(files.root)]) == 0
    page = files.report.read_text()
    assert files.curves.is_file() and len(IMG.findall(page)) == 2
    assert "None (make them with vimtune report" in page
    assert main(["report", str(tmp_path / "nothing")]) == 1  # not a run folder: an error message, no traceback


def _browser() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


@pytest.mark.slow
@pytest.mark.skipif(_browser() is None, reason="no headless browser installed (apt-get install chromium)")
def test_a_headless_browser_renders_every_picture_of_the_report(tmp_path: Path) -> None:
    """Chromium loads the page offline; a script reports each image's decoded width, and the screenshot is not
    blank. A page whose images were broken reports width 0 (checked on a copy with one corrupted picture)."""
    files = fake_run(tmp_path / "run")
    page = render_report(files)
    probe = ("<script>window.addEventListener('load', () => { document.body.setAttribute('data-widths', "
             "Array.from(document.images).map(i => i.naturalWidth).join(',')); });</script></body>")

    def widths(html: str, name: str) -> list[int]:
        path = tmp_path / name
        path.write_text(html.replace("</body>", probe))
        dom = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                              "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120).stdout
        found = re.search(r'data-widths="([0-9,]*)"', dom)
        assert found, f"the browser did not run the page: {dom[:300]}"
        return [int(w) for w in found.group(1).split(",") if w]

    assert len(widths(page, "report.html")) == 3 and all(w > 100 for w in widths(page, "report.html"))
    broken = page.replace("base64,iVBOR", "base64,AAAA", 1)
    assert 0 in widths(broken, "broken.html")

    shot = tmp_path / "shot.png"
    subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,2400",
                    f"--screenshot={shot}", (tmp_path / "report.html").as_uri()], capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    colourful = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 0.2  # curves and the colour map, not text
    assert colourful.mean() > 0.005, f"the screenshot shows almost no coloured pixels ({colourful.mean():.4f})"
    assert np.isfinite(pixels).all()
