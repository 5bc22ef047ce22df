"""The dashboard page in a real browser: Playwright driving Debian's chromium (never a downloaded one).

A live engine replays the bundled BTCUSDT data on a paced clock (a few milliseconds per tick), so the
page is opened while the run goes and must show what a person would look for: positions opening, events
arriving, an equity curve, rejections and partial levels, pushed over Server-Sent Events. Every wait is
for a condition on the page, bounded by `GUARD`. Screenshots go to the test's temporary directory (and,
when `BK_DASHBOARD_SCREENSHOT` names a file, there too: that is how `docs/dashboard.png` is made).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from dashboard_helpers import GUARD, replay_engine, start

import backtest_kit as bk
from backtest_kit.cli.run import PacedClock

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


async def at_least(page: Page, section: str, count: int) -> None:
    """Wait until the table of `section` has `count` rows or more (a locator: no script is evaluated,
    so the page's own content security policy, which forbids eval, stays on)."""
    await page.locator(f"#{section} tbody tr").nth(count - 1).wait_for(timeout=GUARD * 1000)


async def count(page: Page, section: str) -> int:
    return await page.locator(f"#{section} tbody tr").count()


async def test_the_page_follows_a_live_run(tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is needed for the browser test: apt-get install chromium (.ci/run does it)")
    from playwright.async_api import async_playwright, expect

    engine = replay_engine(tmp_path, hours=36, clock=PacedClock(4000))  # 15 ms per one-minute tick
    dashboard = await bk.serve_dashboard(engine, port=0, interval=0.1)
    handles = start(engine)
    wait_ms = GUARD * 1000
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM)
            page = await browser.new_page(viewport={"width": 1280, "height": 1400})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            await page.goto(dashboard.url)
            await expect(page.locator("#conn-text")).to_have_text("live", timeout=wait_ms)
            # instances appear with their status, and positions open while the run goes
            await expect(page.locator("#instances tbody tr")).to_have_count(2, timeout=wait_ms)
            await expect(page.locator("#instances tbody")).to_contain_text("running", timeout=wait_ms)
            await at_least(page, "positions", 1)
            position = await page.inner_text("#positions tbody tr")
            assert "BTCUSDT" in position and ("long" in position or "short" in position) and "%" in position
            # events arrive: the table grows under our eyes (pushed: the page never reloads)
            await at_least(page, "events", 1)
            first = await count(page, "events")
            updates = int(await page.get_attribute("body", "data-updates") or 0)
            await at_least(page, "events", first + 1)
            assert int(await page.get_attribute("body", "data-updates") or 0) > updates
            # closed trades draw the equity curves; rejections and partial levels show
            await expect(page.locator("#equity svg polyline")).to_have_count(2, timeout=wait_ms)
            await at_least(page, "risk", 1)
            await at_least(page, "partials", 1)
            await expect(page.locator("#risk tbody")).to_contain_text("every second signal")
            stats = await page.inner_text("#stats tbody")
            assert "sma-cross · BTCUSDT" in stats and "%" in stats
            await at_least(page, "events", 8)
            await at_least(page, "positions", 1)
            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            target = os.environ.get("BK_DASHBOARD_SCREENSHOT")
            if target:  # the README's picture: later in the run, with more trades on the curves
                await expect(page.locator("#events .empty")).to_contain_text("earlier", timeout=wait_ms)
                await at_least(page, "positions", 1)
                await page.screenshot(path=target, full_page=True)
            # a phone: one column, tables scroll inside their cards, nothing wider than the screen
            # (measured by a script, so this page alone lets the test evaluate one)
            phone_context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                                      device_scale_factor=2, bypass_csp=True)
            phone = await phone_context.new_page()
            await phone.goto(dashboard.url)
            await at_least(phone, "events", 1)
            assert await phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            await phone.screenshot(path=str(tmp_path / "dashboard-phone.png"))
            assert problems == []  # no script error, no CSP violation
            await browser.close()
    finally:
        for handle in handles:
            handle.task.cancel()
        await engine.close(timeout=5)
