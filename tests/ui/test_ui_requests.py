"""The request explorer (filters, a row per request linking to its detail) and one request's detail page."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from keel_ui import CLAUDE, GPT, MARKER, column, set_field

DETAIL_LINK = re.compile(r"/ui/requests/([^/?#]+)$")


def search_form(page):
    return page.get_by_role("search")


def filter_by(page, **fields: str) -> None:
    """Sets the search form's fields (by their labels) and presses Filter."""
    form = search_form(page)
    for label, value in fields.items():
        set_field(form.get_by_label(label, exact=True), value)
    form.get_by_role("button", name="Filter").click()
    page.wait_for_load_state("load")


def shown_count(page) -> int:
    counter = page.locator("[data-count]").first
    expect(counter).to_be_attached()
    return int(counter.get_attribute("data-count"))


def requests_table(page):
    return page.get_by_role("table", name="Requests")


def row_links(page) -> list[str]:
    """Each body row's link to its request's detail page (exactly one per row)."""
    rows = requests_table(page).locator("tbody tr")
    hrefs = []
    for i in range(rows.count()):
        links = [a.get_attribute("href") or "" for a in rows.nth(i).get_by_role("link").all()]
        detail = [h for h in links if DETAIL_LINK.search(h.split("?")[0])]
        assert len(detail) == 1, f"row {i}: links {links}, expected one to /ui/requests/ID"
        hrefs.append(detail[0])
    return hrefs


def test_the_explorer_lists_and_filters_requests(ui, signed_in, keel, seeded):
    page = signed_in
    ui.open(page, "/ui/requests")
    expect(page.get_by_role("heading", level=1)).to_have_text("Requests")
    form = search_form(page)
    for label in ["Model", "Key", "Status", "Outcome", "Cache", "Text"]:
        expect(form.get_by_label(label, exact=True)).to_be_visible()
    for label in ["Outcome", "Cache"]:
        assert form.get_by_label(label, exact=True).evaluate("e => e.tagName") == "SELECT", f"{label} is a select"
    expect(form.get_by_role("button", name="Filter")).to_be_visible()

    table = requests_table(page)
    expect(table).to_be_visible()
    everything = shown_count(page)
    logged = len(keel.log_rows())
    assert everything == logged, f"data-count {everything}, the log holds {logged}"
    links = row_links(page)
    assert 0 < len(links) <= everything
    if everything <= 20:
        assert len(links) == everything
    ids = {DETAIL_LINK.search(h.split("?")[0]).group(1) for h in links}
    assert seeded.marker_id in ids or len(links) < everything, "the seeded requests are listed by id"
    ui.shot(page, "requests")

    filter_by(page, Model=CLAUDE)
    expect(page).to_have_url(re.compile(r"[?&]model=" + re.escape(CLAUDE)))
    models = column(requests_table(page), "Model")
    assert models and all(CLAUDE in m for m in models), models
    claude = shown_count(page)
    assert claude == seeded.by_model[CLAUDE] and claude < everything, (claude, everything)
    ui.shot(page, "requests-filtered")

    ui.open(page, "/ui/requests")
    filter_by(page, Status="404")
    statuses = column(requests_table(page), "Status")
    assert statuses and all(s.startswith("404") for s in statuses), statuses
    assert shown_count(page) == seeded.by_status[404] == len(statuses)

    ui.open(page, "/ui/requests")
    filter_by(page, Text=MARKER)
    found = row_links(page)
    assert len(found) == 1 and seeded.marker_id in found[0], f"text search for {MARKER}: {found}"

    for field, value in [("Tag", "marker-tag"), ("Metadata", "team=payments")]:
        ui.open(page, "/ui/requests")
        filter_by(page, **{field: value})
        found = row_links(page)
        assert len(found) == 1 and seeded.marker_id in found[0], f"{field} {value}: {found}"
    ui.open(page, "/ui/requests")
    filter_by(page, Metadata="team=nobody")
    assert shown_count(page) == 0

    ui.open(page, "/ui/requests")
    filter_by(page, Model=GPT)
    first = requests_table(page).locator("tbody tr").first.get_by_role("link").first
    first.click()
    expect(page).to_have_url(DETAIL_LINK)
    expect(page.get_by_role("heading", level=1)).to_contain_text("Request")


def test_a_requests_detail_shows_its_attempts_and_bodies(ui, signed_in, seeded):
    page = signed_in
    ui.open(page, f"/ui/requests/{seeded.marker_id}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Request")
    for name in ["Summary", "Attempts", "Bodies"]:
        expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
    expect(page.get_by_text(seeded.marker_id).first).to_be_visible()
    # The prompt as sent (bodies = "full").
    expect(page.locator("body")).to_contain_text(f"what is a {MARKER}?")
    expect(page.get_by_text(GPT).first).to_be_visible()
    ui.shot(page, "request-detail")
