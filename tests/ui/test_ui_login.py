"""Signing in and out of the dashboard: the redirect to the login form, a wrong key, the session cookie, the main
navigation, signing out, and signing in by keyboard alone."""

from __future__ import annotations

import base64
import re

from playwright.sync_api import expect

from keel_ui import ADMIN_KEY, httpx

LOGIN = re.compile(r"/ui/login(\?.*)?$")
OVERVIEW = re.compile(r"/ui/?(\?.*)?$")


def session_cookie(context) -> dict | None:
    return next((c for c in context.cookies() if c["name"] == "keel_session"), None)


def test_the_dashboard_redirects_to_a_login_form(ui, page, keel):
    ui.require()
    first = httpx.get(f"{keel.url}/ui", follow_redirects=False, timeout=10)
    assert first.status_code == 303, f"GET /ui without a session: {first.status_code} {first.text[:200]}"
    assert LOGIN.search(first.headers["location"]), first.headers["location"]

    ui.open(page, "/ui")
    expect(page).to_have_url(LOGIN)
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    field = page.get_by_label("Admin key")
    expect(field).to_have_attribute("type", "password")
    expect(field).to_have_attribute("name", "key")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    ui.shot(page, "login")


def test_a_wrong_key_is_refused_with_an_alert(ui, page, context):
    ui.open(page, "/ui/login")
    page.get_by_label("Admin key").fill("not-the-admin-key")
    with page.expect_navigation() as nav:
        page.get_by_role("button", name="Sign in").click()
    assert nav.value is not None and nav.value.status == 401, nav.value and nav.value.status
    expect(page.get_by_role("alert")).to_contain_text("Wrong admin key")
    expect(page.get_by_label("Admin key")).to_be_visible()
    assert session_cookie(context) is None, context.cookies()


def test_the_right_key_signs_in_with_a_strict_http_only_cookie(ui, page, context):
    ui.open(page, "/ui/login")
    page.get_by_label("Admin key").fill(ADMIN_KEY)
    # The form's POST (wherever its action points), answered with a redirect to the overview.
    with page.expect_response(lambda r: r.request.method == "POST" and r.request.is_navigation_request()) as posted:
        page.get_by_role("button", name="Sign in").click()
    assert posted.value.status == 303, f"POST {posted.value.url} with the right key: {posted.value.status}"
    assert OVERVIEW.search(posted.value.headers.get("location", "")), posted.value.headers
    expect(page).to_have_url(OVERVIEW)
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    cookie = session_cookie(context)
    assert cookie is not None, f"no keel_session cookie: {context.cookies()}"
    assert cookie["httpOnly"], cookie
    assert cookie["sameSite"] == "Strict", cookie
    value = cookie["value"]
    for form in (ADMIN_KEY, base64.b64encode(ADMIN_KEY.encode()).decode(),
                 base64.urlsafe_b64encode(ADMIN_KEY.encode()).decode().rstrip("=")):
        assert form not in value, f"the session cookie carries the admin key: {value!r}"
    assert page.evaluate("document.cookie").find("keel_session") < 0, "HttpOnly: invisible to scripts"


def test_every_page_has_the_main_navigation_and_signing_out_ends_the_session(ui, signed_in, keel):
    page = signed_in
    for path in ["/ui", "/ui/requests", "/ui/keys", "/ui/evals"]:
        ui.open(page, path)
        nav = page.get_by_role("navigation", name="Main")
        for name in ["Overview", "Requests", "Keys", "Evaluations"]:
            expect(nav.get_by_role("link", name=name, exact=True)).to_be_visible()
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    # The navigation's links lead where they say.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Requests", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Requests")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Overview", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")

    sign_out = page.get_by_role("button", name="Sign out")
    assert sign_out.evaluate("b => (b.form && b.form.method) || ''").lower() == "post", "Sign out is a POST form"
    sign_out.click()
    expect(page).to_have_url(LOGIN)
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    ui.open(page, "/ui")
    expect(page).to_have_url(LOGIN)


def test_signing_in_by_keyboard_alone(ui, page):
    ui.open(page, "/ui/login")
    focused = lambda: page.evaluate("document.activeElement && document.activeElement.name") == "key"  # noqa: E731
    for _ in range(6):  # autofocus needs no Tab; else past a skip link or two
        if focused():
            break
        page.keyboard.press("Tab")
    assert focused(), "Tab never reached the Admin key field"
    expect(page.get_by_label("Admin key")).to_be_focused()
    page.keyboard.type(ADMIN_KEY)
    page.keyboard.press("Enter")
    expect(page).to_have_url(OVERVIEW)
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
