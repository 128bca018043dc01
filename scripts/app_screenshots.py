"""Open `lamda-bench app` in a real headless browser, ask it as a person would, check the answer
on the page, and save one screenshot per tab under docs/app/.

    python scripts/app_screenshots.py [--out-dir docs/app] [--port 7870]

Needs the app and screenshots extras (pip install -e '.[app,screenshots]') and Chromium from the
system's packages (Debian: apt-get install chromium, /usr/bin/chromium; playwright's own browser
download is never used). Not part of the test run: CI machines may have no Chromium.
It launches the app on 127.0.0.1 into a temporary answers directory, asks for LLaMA2-7B LoRA r16
(batch 4 x 1024, bf16: an extrapolated estimate), fits tiny-llama's LoRA and LaMDA in a 70 MiB
budget, and browses reports/llama7b-cpu filtered to r 16, batch 4 x 1024, unquantized.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
MAX_PNG = 300 * 1024


def wait_for(url: str, proc: subprocess.Popen, timeout_s: float = 300.0) -> None:
    start = time.time()
    while time.time() - start < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with {proc.returncode} before serving {url}")
        try:
            urllib.request.urlopen(url, timeout=2).read(1)
            return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"{url}: no answer in {timeout_s:.0f} s")


def save(page, path: Path) -> None:
    """A screenshot as a 256-colour PNG (small enough to commit)."""
    from PIL import Image

    image = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    if image.height > 2400:
        image = image.crop((0, 0, image.width, 2400))
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1024:.0f} KiB)")
    if size > MAX_PNG:
        raise SystemExit(f"{path}: {size} bytes, over {MAX_PNG}")


def fill(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True).first
    box.fill(value)
    box.press("Enter" if box.evaluate("e => e.getAttribute('role')") == "combobox" else "Tab")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs" / "app")
    parser.add_argument("--port", type=int, default=7870)
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    answers = Path(tempfile.mkdtemp(prefix="lamda-bench-app-")) / "answers"
    browsed = Path("reports") / "llama7b-cpu"  # relative to the repository, the app's cwd: the page shows
    # reports/llama7b-cpu, not this machine's checkout path
    url = f"http://127.0.0.1:{args.port}/"
    proc = subprocess.Popen([sys.executable, "-m", "lamda_bench", "app", str(answers), str(browsed),
                             "--port", str(args.port)], cwd=REPO)
    try:
        wait_for(url, proc)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            # Ask: the form's defaults are LLaMA2-7B LoRA r16, batch 4 x 1024, bf16
            start = time.time()
            page.get_by_role("button", name="Estimate", exact=True).click()
            expect(page.get_by_text("llama2-7b-lora-r16-", exact=False).first).to_be_visible(timeout=600_000)
            expect(page.get_by_text("peak: 47.97 GiB").first).to_be_visible()
            print(f"Ask answered in the page in {time.time() - start:.1f} s")
            save(page, args.out_dir / "ask.png")
            # Fit: tiny-llama, LoRA and LaMDA, 70 MiB, seq 64
            page.get_by_role("tab", name="Fit").click()
            fill(page, "model", "tiny-llama")
            fill(page, "budget: a size (24GiB, 24GB) or a card (H100-80GB)", "70MiB")
            fill(page, "its value", "64")
            page.get_by_role("button", name="Fit", exact=True).click()
            expect(page.get_by_text("lamda: max batch").first).to_be_visible(timeout=600_000)
            save(page, args.out_dir / "fit.png")
            # Browse: reports/llama7b-cpu, r=16, sorted by peak
            page.get_by_role("tab", name="Browse").click()
            fill(page, "results directory (pick one or type a path)", str(browsed))
            fill(page, "sort by (a cell key or a record path)", "memory.peak")
            page.get_by_label("filter: KEY=VALUE per line", exact=False).fill("r=16\nbatch=4\nseq=1024\nquant=none")
            page.get_by_role("button", name="Show", exact=True).click()
            expect(page.get_by_text(" of 72 records").first).to_be_visible(timeout=600_000)
            page.wait_for_timeout(2000)
            save(page, args.out_dir / "browse.png")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
