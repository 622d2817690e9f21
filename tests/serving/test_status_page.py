"""The live status page in a real headless browser (Debian's Chromium), against a real server.

CI installs Chromium (.ci/run); without it the test fails under CI and is skipped elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from live_server import free_port, start_server, stop_server

from nmrn.baselines.popularity import Popularity

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "page-token"
# users 0..9 each consumed item 0; items 1..5 popular in that order
HISTORY = [(u, 0, float(u)) for u in range(10)] + [
    (100 + j, item, 20.0 + j) for j, item in enumerate([1] * 5 + [2] * 4 + [3] * 3 + [4, 4, 5])
]


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-quic", f"--user-data-dir={profile}",
         "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture()
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    ckpt = tmp_path / "pop.ckpt"
    Popularity().fit(HISTORY).save(ckpt)
    port = free_port()
    # --live-quality 1000: the token bucket refills in a millisecond, so every one of the ten
    # events is ranked however fast they arrive (at the default 10/s, 8 at start, it was a race)
    proc = start_server(ckpt, port, "--apply-wait", "0", "--live-quality", "1000",
                        "--log-level", "warning", env={"NMRN_TOKEN": TOKEN})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def test_the_status_page_shows_live_figures_in_a_real_browser(server: str, tmp_path: Path) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium NOT FOUND: CI must install it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    # users 0..9 consume the most popular new item: 1 is every user's top recommendation
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for u in range(10):
        r = httpx.post(f"{server}/events", json={"user": u, "item": 1, "timestamp": 100.0 + u},
                       headers=auth, timeout=10)
        assert r.status_code == 202
    deadline = time.monotonic() + 30  # 202 means accepted: wait until the writer applied all
    while (status := httpx.get(f"{server}/status.json", timeout=10).json())["applied_seq"] < 10:
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["live_quality"]["total"] == 10 and status["live_quality"]["hits"] == 1.0
    assert status["applied_seq"] == 10 and status["events_per_s"] > 0
    # the page, as a browser renders it after its script ran
    dom = _chromium("--dump-dom", f"{server}/", profile=tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    shown = dict(re.findall(r'id="(\w+)"[^>]*>([^<]*)<', dom.stdout))
    assert shown["model"] == "Popularity" and shown["writer"] == "running"
    assert shown["hits"] == "1.000" and shown["ndcg"] == "1.000"
    assert shown["quality_n"] == "10 recent of 10 ranked events"
    assert float(shown["rate"]) > 0 and shown["lag"] == "0"
    assert shown["users"] == "25"  # the figures came from the live service, not the template
    # a screenshot: the page is drawn (not blank), at the size asked
    png = tmp_path / "page.png"
    shot = _chromium("--screenshot=" + str(png), "--window-size=1200,800", f"{server}/",
                     profile=tmp_path / "p2")
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[:2] == (800, 1200)
    assert float(np.std(pixels[..., :3])) > 0.02  # text and cards, not an empty page
