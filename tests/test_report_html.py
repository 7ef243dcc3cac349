"""``report.html``: self-contained, opened in a real headless Chromium."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from searchlab.report.comparison import write_report  # noqa: E402
from searchlab.result import Result  # noqa: E402
from searchlab.runfiles import RunRecord  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def _runs(hostile: str = "") -> list[RunRecord]:
    out = []
    for k, label in enumerate(["random", "evolution"]):
        for seed in range(3):
            rng = np.random.default_rng(10 * k + seed)
            res = tuple(Result(rule=f"g*{i}{hostile}", key=f"{label}{seed}-{i}",
                               reward=float(rng.random()), best_lr=0.01,
                               sweep=((1e-3, 0.2), (1e-2, 0.5), (1e-1, 0.3)),
                               curve=(0.4, 0.5, 0.55), extra={"sample": i, "cpu_seconds": 1.0})
                        for i in range(15))
            out.append(RunRecord(label=label, seed=seed, results=res,
                                 summary={"asked": 15, "seconds": 15.0}))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One report of hand-made runs whose rule texts carry markup."""
    return write_report(_runs("<script>window.__pwned=1</script>"), tmp_path_factory.mktemp("html"),
                        title="t", reps=50)


def test_report_html_is_self_contained_and_escapes_rule_text(files):
    page = files["report.html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page     # nothing fetched
    assert page.count("data:image/png;base64,") >= 6
    assert "<table>" in page


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing")
def test_report_html_renders_in_headless_chromium(files):
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(files["report.html"].as_uri())
            # every strategy has a row in the rendered summary table
            cells = page.locator("table").first.locator("td:first-child").all_inner_texts()
            assert {"random", "evolution"} <= set(cells)
            # every image decoded (a broken data URI has naturalWidth 0)
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            assert len(widths) >= 6 and all(w > 100 for w in widths)
            assert page.locator("h3").all_inner_texts() == ["random", "evolution"]
            # the hostile rule text is shown as text, and ran no script
            assert "<script>" in page.locator(".rule code").first.inner_text()
            assert page.evaluate("typeof window.__pwned") == "undefined"
        finally:
            browser.close()
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
