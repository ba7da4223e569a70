"""The report in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by selenium) opens report.html from disk, logs no console error, renders every plot,
shows the alarms section, and a screenshot is saved.

Marked `browser` (not in the default run); `.ci/run` installs Chromium and runs it, and it
skips with the reason where Chromium, chromedriver or selenium is missing. The screenshot goes
to $R1LAB_ARTIFACTS (default: the test's tmp folder) as report.png.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from r1lab.analysis.report import build_report

pytestmark = pytest.mark.browser


def _run_folder(folder: Path) -> None:
    """A GRPO-shaped run: every curve the report draws, samples, and one alarm (entropy)."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = []
    for s in range(1, 31):
        metrics.append({
            "step": s, "reward": 0.5 + s / 60, "reward/accuracy": 0.3 + s / 50, "reward/format": 0.9,
            "accuracy": 0.3 + s / 50, "kl": 0.001 * s, "entropy": 0.9 * math.exp(-s / 4),
            "loss": 0.1 / s, "grad_norm": 1.0 / math.sqrt(s), "lr": 1e-4, "clip_frac": 0.01,
            "clip_frac_low": 0.004, "clip_frac_high": 0.006, "completion_len": 20 + s,
            "truncated_rate": 0.0, "think_rate": min(1.0, 0.4 + s / 30), "reward_errors": 0,
            "zero_signal_groups": 0.2, **({"eval/pass1": 0.4 + s / 100} if s % 10 == 0 else {})})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    samples = [{"step": s, "prompt": f"{s}+{s}", "answer": str(2 * s), "reward": 1.5,
                "rewards": {"accuracy": 1.0, "format": 1.0},
                "completion": f"<think>{s}+{s}: wait, check: {2 * s}</think><answer>{2 * s}</answer>"}
               for s in (1, 15, 30)]
    (folder / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in samples))


def test_report_renders_in_headless_chromium(tmp_path: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if chromium is None or driver_bin is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    _run_folder(tmp_path / "run")
    report = build_report(tmp_path / "run")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers online
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
    try:
        driver.get(report.resolve().as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        imgs = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        expected = int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-plots"))
        assert len(imgs) == expected >= 12, imgs
        assert all(done and w > 100 and h > 100 for _, done, w, h in imgs), imgs
        alarms = driver.find_element(By.ID, "alarms")
        assert alarms.is_displayed() and "entropy_collapse" in alarms.text
        top = driver.execute_script("return document.getElementById('alarms').getBoundingClientRect().top")
        assert top < 200  # at the top of the page
        out = Path(os.environ.get("R1LAB_ARTIFACTS", tmp_path))
        out.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(int(height) + 100, 6000))
        assert driver.save_screenshot(str(out / "report.png"))
        assert (out / "report.png").stat().st_size > 50_000
    finally:
        driver.quit()
