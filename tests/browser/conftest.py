"""A headless chromium page for the browser tests (Playwright's Python package over Debian's chromium).

Without chromium or Playwright the tests skip with the reason, unless ``TICKSTOCK_REQUIRE_BROWSER`` is
set (to anything but ``0``): CI sets it, so there a missing browser fails instead of passing silently.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
VIEWPORT = 1400, 1250


def _missing() -> str | None:
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} is not installed (bash ops/install-browser.sh)")
    return "; ".join(missing) or None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="module", autouse=True)
def browser_available() -> None:
    """Skip (or, with TICKSTOCK_REQUIRE_BROWSER, fail) before any server starts for the module."""
    missing = _missing()
    if missing:
        if os.environ.get("TICKSTOCK_REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(f"TICKSTOCK_REQUIRE_BROWSER is set, but {missing}")
        pytest.skip(missing)


@pytest.fixture
async def page(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A fresh page in its own headless chromium. A failing test leaves ``test-artifacts/<test>-failed.png``;
    an uncaught error in the page fails the test."""
    from playwright.async_api import async_playwright

    failed_shot = ARTIFACTS / f"{request.node.name}-failed.png"
    failed_shot.unlink(missing_ok=True)  # from an earlier run
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            width, height = VIEWPORT
            context = await browser.new_context(
                viewport={"width": width, "height": height}, color_scheme="light"
            )
            p = await context.new_page()
            p.on("pageerror", lambda exc: errors.append(str(exc)))
            yield p
            if request.node.stash.get(_FAILED, False):
                ARTIFACTS.mkdir(exist_ok=True)
                await p.screenshot(path=str(failed_shot), full_page=True)
        finally:
            await browser.close()
    assert not errors, f"uncaught errors in the page: {errors}"
