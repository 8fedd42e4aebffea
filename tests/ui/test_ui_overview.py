"""The overview: the seeded traffic in its statistics, the range links, charts with text alternatives, the tables
by model and by key, and a layout that still fits at 200% zoom."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from keel_ui import CLAUDE, GPT, number

STATS = ["requests", "error_rate", "latency_p50_ms", "latency_p99_ms", "ttft_p50_ms", "tokens", "cost_usd",
         "cache_hit_rate", "saved_usd"]
RANGES = ["1h", "24h", "7d", "30d", "90d"]


def stat(page, name: str):
    return page.locator(f"dl dd[data-stat='{name}']")


def test_the_overview_shows_the_seeded_traffic(ui, signed_in, keel, seeded):
    page = signed_in
    ui.open(page, "/ui?range=24h")
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")

    ranges = page.get_by_role("navigation", name="Range")
    for r in RANGES:
        expect(ranges.get_by_role("link", name=r, exact=True)).to_be_visible()
    expect(ranges.get_by_role("link", name="24h", exact=True)).to_have_attribute("aria-current", "page")
    for r in RANGES:
        if r != "24h":
            expect(ranges.get_by_role("link", name=r, exact=True)).not_to_have_attribute("aria-current", "page")

    for name in STATS:
        expect(stat(page, name)).to_have_count(1)
    # Every row of the log is one of the seeded requests (test_ui_seed checks that through the admin API); rows
    # other tests add (a key created in the browser, say) are counted too.
    logged = len(keel.log_rows())
    assert logged >= seeded.requests
    requests_text = stat(page, "requests").inner_text().strip()
    assert re.fullmatch(r"\d{1,3}([,\u00a0\u2009\u202f ]?\d{3})*", requests_text), requests_text
    assert number(requests_text) == logged, f"requests shows {requests_text!r}, the log holds {logged}"
    error_rate = stat(page, "error_rate").inner_text()
    assert number(error_rate) > 0, f"error rate {error_rate!r}: {sum(n for s, n in seeded.by_status.items() if s != 200)} errors were seeded"

    figures = page.locator("figure:has(svg[role='img'])")
    assert figures.count() >= 1, "no chart (inline SVG with role=img in a <figure>)"
    for i in range(figures.count()):
        fig = figures.nth(i)
        caption = fig.locator("figcaption").inner_text().strip()
        assert caption, f"chart {i} has no figcaption"
        for svg in fig.locator("svg[role='img']").all():
            assert (svg.get_attribute("aria-label") or "").strip(), f"chart {caption!r}: svg without aria-label"
        assert fig.locator("table").count() >= 1, f"chart {caption!r} has no table as its text alternative"

    by_model = page.get_by_role("table", name="By model")
    expect(by_model).to_contain_text(GPT)
    expect(by_model).to_contain_text(CLAUDE)
    by_key = page.get_by_role("table", name="By key")
    assert seeded.key_name in by_key.inner_text() or seeded.key_id in by_key.inner_text(), by_key.inner_text()
    ui.shot(page, "overview")

    ranges.get_by_role("link", name="7d", exact=True).click()
    expect(page).to_have_url(re.compile(r"[?&]range=7d"))
    expect(page.get_by_role("navigation", name="Range").get_by_role("link", name="7d", exact=True)) \
        .to_have_attribute("aria-current", "page")
    assert number(stat(page, "requests").inner_text()) == logged, "the same requests in the last 7 days"


def test_the_overview_fits_at_200_percent_zoom(ui, browser, keel, seeded, request):
    # 200% of a 1280-pixel-wide window: 640 CSS pixels at a device scale factor of 2.
    ctx = browser.new_context(viewport={"width": 640, "height": 400}, device_scale_factor=2, base_url=keel.url)
    ctx.set_default_timeout(10_000)
    try:
        page = ctx.new_page()
        ui.sign_in(page)
        ui.open(page, "/ui?range=24h")
        expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
        widths = page.evaluate("({scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth})")
        ui.shot(page, "overview-zoom-200")
        assert widths["scroll"] <= widths["client"] + 1, f"a horizontal scrollbar at 200% zoom: {widths}"
    finally:
        ctx.close()
