#!/usr/bin/env python3
"""Run `gridwatt demo --serve`, take a screenshot of the job page with headless Chromium, stop.

    .venv/bin/python scripts/ui_screenshot.py docs/ui-job.png

Used to refresh the README's screenshot (Debian's chromium and chromium-driver, selenium).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from selenium import webdriver


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/ui-job.png")
    demo = subprocess.Popen([sys.executable, "-m", "gridwatt.cli", "demo", "--serve"], stdout=subprocess.PIPE,
                            text=True)
    assert demo.stdout is not None
    try:
        url = ""
        for line in demo.stdout:
            print(line, end="")
            m = re.search(r"web page: (\S+)/ui/ .*?job: (\S+);", line)
            if m:
                url = m.group(2)
                break
        if not url:
            print("the demo printed no web page address", file=sys.stderr)
            return 1
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     "--window-size=1120,1150", "--hide-scrollbars"):
            opts.add_argument(flag)
        driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService("/usr/bin/chromedriver"))
        try:
            driver.get(url)
            time.sleep(0.5)
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
        print(f"wrote {out} ({out.stat().st_size} bytes)")
        return 0
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()


if __name__ == "__main__":
    sys.exit(main())
