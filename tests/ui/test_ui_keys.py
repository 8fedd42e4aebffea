"""Keys and budgets: the list with spend, a key created in the browser (its secret shown once, and working), revoked
in the browser (and refused from then on), a reload after creating that neither shows the secret again nor creates
a second key, and a form POST without its CSRF token refused."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from keel_ui import GPT, KEY_SECRET, SEED_KEY_NAME, set_field

NEW_KEY = "ui-browser-key"
RELOADED_KEY = "ui-reloaded-key"


def keys_table(page):
    return page.get_by_role("table", name="Keys")


def key_row(page, name: str):
    return keys_table(page).locator("tbody tr").filter(has_text=name)


def test_keys_are_listed_created_once_and_revoked(ui, signed_in, keel, seeded):
    page = signed_in
    page.on("dialog", lambda d: d.accept())  # a confirmation before revoking, if the page asks
    ui.open(page, "/ui/keys")
    expect(page.get_by_role("heading", level=1)).to_have_text("Keys")
    expect(keys_table(page)).to_be_visible()

    seed_row = key_row(page, SEED_KEY_NAME)
    expect(seed_row).to_have_count(1)
    spent = seed_row.locator("[data-spent-today]")
    if spent.count():
        assert float(spent.first.get_attribute("data-spent-today")) > 0, "the seeded key spent money today"
    else:
        expect(seed_row).to_contain_text("$")
    expect(seed_row.get_by_role("button", name="Revoke")).to_be_visible()

    form = page.locator("form").filter(has=page.get_by_role("button", name="Create key"))
    set_field(form.get_by_label("Name", exact=True), NEW_KEY)
    set_field(form.get_by_label("Daily budget (USD)"), "2")
    set_field(form.get_by_label("Monthly budget (USD)"), "20")
    set_field(form.get_by_label("Models", exact=True), GPT)
    form.get_by_role("button", name="Create key").click()

    shown = page.locator("#new-key-secret")
    expect(shown).to_be_visible()
    assert shown.get_attribute("role") == "status", "the secret is announced (role=status)"
    found = KEY_SECRET.search(shown.inner_text())
    assert found, f"no sk-keel-… secret in {shown.inner_text()!r}"
    secret = found.group()
    ui.shot(page, "keys")

    created = [k for k in keel.keys() if k["name"] == NEW_KEY]
    assert len(created) == 1, created
    assert created[0]["budget_daily_usd"] == 2 and created[0]["budget_monthly_usd"] == 20, created[0]
    assert created[0]["models"] == [GPT], created[0]
    answer = keel.chat(secret, GPT, "Hello from a key made in the browser.")
    assert answer.status_code == 200, answer.text

    ui.open(page, "/ui/keys")  # the page visited again (reloading is the next test's)
    expect(page.get_by_role("heading", level=1)).to_have_text("Keys")
    expect(page.locator("#new-key-secret")).to_have_count(0)
    assert secret not in page.content(), "the secret is shown once only"

    row = key_row(page, NEW_KEY)
    expect(row).to_have_count(1)
    revoke = row.get_by_role("button", name="Revoke")
    assert revoke.evaluate("b => (b.form && b.form.method) || ''").lower() == "post", "Revoke is a POST form"
    revoke.click()
    row = key_row(page, NEW_KEY)
    expect(row).to_contain_text(re.compile("revoked", re.I))
    expect(row.get_by_role("button", name="Revoke")).to_have_count(0)
    refused = keel.chat(secret, GPT, "Still there?")
    assert refused.status_code == 401, f"a revoked key: {refused.status_code} {refused.text}"
    ui.shot(page, "keys-revoked")


def test_reloading_after_creating_a_key_neither_shows_its_secret_nor_creates_another(ui, signed_in, keel):
    # A page that answers the form's POST itself is POSTed again by a reload (Chromium resends it without asking
    # under automation, and a person clicks through the resubmit prompt): a second key, and a new secret shown.
    # Answering the POST with a 303 to a GET page that shows the secret once avoids both.
    page = signed_in
    ui.open(page, "/ui/keys")
    form = page.locator("form").filter(has=page.get_by_role("button", name="Create key"))
    set_field(form.get_by_label("Name", exact=True), RELOADED_KEY)
    form.get_by_role("button", name="Create key").click()
    expect(page.locator("#new-key-secret")).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", level=1)).to_have_text("Keys")
    made = [k for k in keel.keys() if k["name"] == RELOADED_KEY]
    assert len(made) == 1, (f"reloading the page sent the create form again: {len(made)} keys named "
                            f"{RELOADED_KEY} (answer the POST with a 303 to a GET page)")
    expect(page.locator("#new-key-secret")).to_have_count(0)


def test_a_post_without_the_csrf_token_is_refused(ui, signed_in, keel):
    page = signed_in
    ui.open(page, "/ui/keys")
    token = page.locator("form input[name='csrf']").first
    expect(token).to_be_attached()
    assert token.get_attribute("type") == "hidden" and token.get_attribute("value"), "a hidden csrf field"
    before = len(keel.keys())

    # The session cookie goes along (page.request shares the context's cookies); the token does not.
    missing = page.request.post(f"{keel.url}/ui/keys", form={"name": "csrf-probe", "budget_daily_usd": "1"},
                                max_redirects=0)
    assert missing.status == 403, f"POST /ui/keys without csrf: {missing.status} {missing.text()[:200]}"
    forged = page.request.post(f"{keel.url}/ui/keys", max_redirects=0,
                               form={"name": "csrf-probe", "budget_daily_usd": "1", "csrf": "forged-token"})
    assert forged.status == 403, f"POST /ui/keys with a forged csrf: {forged.status} {forged.text()[:200]}"
    keys = keel.keys()
    assert len(keys) == before and not any(k["name"] == "csrf-probe" for k in keys), "no key was created"
