"""Evaluations: the stored runs listed, and two runs compared with the regression first."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from keel_ui import SUITE


def pass_rate(percent: int, passed: int, cases: int) -> re.Pattern:
    """A pass rate as a percentage ("75%", "75.0 %") or a fraction ("3/4")."""
    return re.compile(rf"\b{percent}(\.0+)?\s*%|\b{passed}\s*/\s*{cases}\b")


def test_two_runs_compared_show_the_regression_first(ui, signed_in, seeded):
    page = signed_in
    baseline, candidate = seeded.runs
    ui.open(page, "/ui/evals")
    expect(page.get_by_role("heading", level=1)).to_have_text("Evaluations")
    runs = page.get_by_role("table", name="Runs")
    expect(runs).to_contain_text(SUITE)
    expect(runs.locator("tbody tr").filter(has_text=SUITE)).to_have_count(2)

    page.get_by_label("Baseline run").select_option(baseline)
    page.get_by_label("Candidate run").select_option(candidate)
    page.get_by_role("button", name="Compare").click()

    expect(page).to_have_url(re.compile(r"/ui/evals/compare\?"))
    query = page.url.split("?", 1)[1]
    assert f"a={baseline}" in query and f"b={candidate}" in query, page.url
    expect(page.get_by_role("heading", level=1)).to_contain_text("Compare")
    cases = page.get_by_role("table", name="Cases")
    first = cases.locator("tbody tr").first
    expect(first).to_have_attribute("data-change", "regression")
    expect(first).to_contain_text(seeded.regressed_case)
    expect(cases.locator("tbody tr[data-change='regression']")).to_have_count(1)
    expect(page.locator("[data-stat='pass_rate_a']")).to_have_text(pass_rate(100, 4, 4))  # the baseline: 4 of 4
    expect(page.locator("[data-stat='pass_rate_b']")).to_have_text(pass_rate(75, 3, 4))  # the candidate: 3 of 4
    ui.shot(page, "eval-compare")
