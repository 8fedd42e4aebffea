"""First paint under 300 ms (issue 17): the overview, the request explorer, the keys page and a collection's
search, each loaded once to warm up and then three times, the median printed in the summary as
`[ui] PAGE fcp=…ms dcl=…ms`."""

from __future__ import annotations

import pytest

from keel_ui import COLLECTION

FIRST_PAINT_BUDGET_MS = 300
PAGES = [("overview", "/ui?range=24h"), ("requests", "/ui/requests"), ("keys", "/ui/keys"),
         ("collection search", f"/ui/collections/{COLLECTION}?q=package+manager+versions")]


@pytest.mark.parametrize(("name", "path"), PAGES, ids=[n for n, _ in PAGES])
def test_first_paint_is_under_300_ms(ui, signed_in, name, path, request):
    if path.startswith("/ui/collections/"):
        request.getfixturevalue("collection")
    t = ui.timing(signed_in, name, path)
    print(t.line())
    assert t.fcp_ms is not None, f"{name}: no first-contentful-paint entry"
    assert t.fcp_ms < FIRST_PAINT_BUDGET_MS, t.line()
