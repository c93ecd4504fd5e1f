"""Takes docs/report.png: a screenshot of a sweep's report.html in headless Chromium.

    python docs/make_screenshot.py OUT/report.html [docs/report.png]

Uses Debian's ``chromium`` through playwright (no browser download), scrolled to the
semantic RSMs of ``small_vgg features.11`` (run ``repsim demo`` or any sweep with that
layer first).
"""
import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(report: str, out: str = "docs/report.png", layer: str = "features.11") -> None:
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path="/usr/bin/chromium", args=ARGS, headless=True,
            viewport={"width": 1240, "height": 560})
        page = ctx.new_page()
        page.goto(Path(report).resolve().as_uri())
        page.evaluate("""(layer) => { const f = [...document.querySelectorAll('figure')].find(
            f => f.textContent.includes(layer + ': semantic RSM'));
            (f.previousElementSibling || f).scrollIntoView(); window.scrollBy(0, -8); }""",
                      layer)
        raw = Path(profile) / "shot.png"
        page.screenshot(path=str(raw))
        ctx.close()
        im = Image.open(raw).convert("RGB")
        im.crop((0, 0, 940, im.height)).save(out, optimize=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
