"""The `screenshot` command: a report rendered to a PNG with headless Chromium (Debian's `chromium`),
for a README or a slide.

    roi-consistency screenshot eval/report.html report.png --section headline
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from roi_consistency.errors import UserError
from roi_consistency.files.atomic import atomic_write

SECTIONS = ("headline", "auroc", "faithfulness", "localisation", "leakage", "sanity", "confounders", "calibration",
            "examples")


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(html_path, png_path, width: int = 1280, height: int = 3000, section: str | None = None) -> Path:
    """Render `html_path` to a `width`x`height` PNG with headless Chromium and return the PNG's Path;
    `section` (one of SECTIONS, the report's section ids) starts the view there."""
    exe = find_chromium()
    if exe is None:
        raise UserError("no Chromium found for the screenshot: install Debian's chromium package "
                        "(apt-get install chromium) or put chromium / google-chrome on PATH")
    src, png = Path(html_path).resolve(), Path(png_path).resolve()
    if not src.is_file():
        raise UserError(f"{src}: no such report file")
    # A fresh profile each time: no first-run state, no lock clash with a running browser.
    with tempfile.TemporaryDirectory(prefix="roi-chromium-") as profile:
        shot = Path(profile) / "shot.png"  # moved into place only when complete
        if section:  # a copy of the page that starts at the section (scrolling to an anchor is not reliable)
            html = src.read_text(encoding="utf-8")
            head, _, body = html.partition("<body>")
            at = body.find(f"<h2 id='{section}'>")
            if at < 0:
                raise UserError(f"{src}: no section {section!r} in this report")
            src = Path(profile) / "section.html"
            src.write_text(head + "<body>\n" + body[at:], encoding="utf-8")
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={shot}", src.as_uri()]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired as e:
            raise UserError(f"{exe} did not finish the screenshot of {src} within 60 s") from e
        if not shot.is_file() or shot.stat().st_size == 0:
            raise UserError(f"{exe} wrote no screenshot (exit {res.returncode}): {res.stderr.strip()[-800:]}")
        return atomic_write(png, lambda tmp: shutil.copyfile(shot, tmp))
