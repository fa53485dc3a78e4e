"""``/docs`` (Swagger UI) in a real browser under the Content-Security-Policy the hub sends with it: the
page renders every operation and expands one with no CSP violation (the policy is not weakened to fit)."""

from __future__ import annotations

from typing import Any

from api.securityheaders import DEFAULT_HTML_CSP
from tests.support import LiveHub

_RECORD = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


async def test_docs_render_under_their_csp(page: Any, live_hub: LiveHub) -> None:
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
    await page.add_init_script(_RECORD)
    response = await page.goto(f"{live_hub.url}/docs")
    assert response.headers["content-security-policy"] == DEFAULT_HTML_CSP
    await page.wait_for_selector(".opblock-summary", timeout=15_000)
    operations = await page.locator(".opblock").count()
    assert operations > 20
    await page.locator(".opblock-summary").first.click()
    await page.wait_for_selector(".opblock-body", timeout=15_000)
    violations = await page.evaluate("window.__violations")
    assert violations == [], violations
    assert not [line for line in console if "Content Security Policy" in line], console
