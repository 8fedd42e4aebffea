"""Session fixtures of the dashboard tests: a `keel-mock-upstream`, a `keel serve` with keys required (admin key
in KEEL_ADMIN_KEY) and a SQLite store of its own, data seeded through keel's HTTP API (a virtual key, chat
requests with distinct models and statuses, two stored evaluation runs, the second regressing on one case, a
collection of seven Node.js API documents from ../shared/data ingested with keel's local MiniLM, for the tests
that ask for it), and Debian's Chromium driven by Playwright.

Run on its own: `python3 -m pytest tests/ui -q` (tests/sdk has a conftest of its own). Binaries come from
$KEEL_BIN / $KEEL_MOCK_BIN, else $CARGO_TARGET_DIR/debug (default ~/.cache/keel-target), else ./target/debug; the
browser from $KEEL_UI_CHROMIUM, else /usr/bin/chromium. Screenshots go to tests/ui/artifacts/.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

import keel_ui
from keel_ui import (ADMIN_KEY, CLAUDE, COLLECTION, COLLECTION_FILES, EVAL_KEY_NAME, NODE_DOCS, GPT, MARKER, SEED_KEY_NAME, SUITE, UNKNOWN_MODEL, Keel, Mock,
                     Seeded, Ui, error_reply, httpx, text_reply)

_PROCESSES: list[keel_ui.Process] = []


# --------------------------------------------------------------------------------------------- keel


@pytest.fixture(scope="session")
def keel(tmp_path_factory) -> Iterator[Keel]:
    work = tmp_path_factory.mktemp("keel-ui")
    try:
        mock_proc, mock_url = keel_ui.start_mock(work)
        _PROCESSES.append(mock_proc)
        config = work / "keel.toml"
        keel_ui.write_config(config, mock_url)
        proc, url = keel_ui.serve(config, work)
        _PROCESSES.append(proc)
        mock = Mock(mock_url)
        with httpx.Client(base_url=url, timeout=30, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as admin:
            yield Keel(url=url, config=config, work=work, process=proc, mock=mock, admin=admin)
        mock.close()
    finally:
        for p in reversed(_PROCESSES):
            p.stop()
        _PROCESSES.clear()


# --------------------------------------------------------------------------------------------- seeding


def _send(keel: Keel, seeded: Seeded, key: str, model: str, prompt: str, expect: int,
          headers: dict[str, str] | None = None) -> str:
    resp = keel.chat(key, model, prompt, headers)
    assert resp.status_code == expect, f"seeding {model} {prompt!r}: expected {expect}, got {resp.status_code} {resp.text}"
    seeded.requests += 1
    seeded.by_model[model] = seeded.by_model.get(model, 0) + 1
    seeded.by_status[resp.status_code] = seeded.by_status.get(resp.status_code, 0) + 1
    return resp.headers["x-request-id"]


def _seed_requests(keel: Keel, seeded: Seeded) -> None:
    """20 chat requests with the seeded key: 8 to gpt-test (one holding MARKER), 7 to claude-test, 2 to an
    unknown model (404), and 3 the mock fails: 500 (keel: 502), 429 (429) and 400 (400)."""
    created = keel.create_key(SEED_KEY_NAME, budget_daily_usd=5.0)
    assert created["key"].startswith("sk-keel-"), created
    seeded.key_id = created["id"]
    key = created["key"]
    keel.mock.reset()
    topics = ["billing", "latency", "refunds", "invoices", "routing", "caching", "quotas"]
    for i, topic in enumerate(topics):
        _send(keel, seeded, key, GPT, f"Tell me about {topic}, please (seed {i}).", 200)
        _send(keel, seeded, key, CLAUDE, f"Summarise {topic} in one line (seed {i}).", 200)
    # The marker request is also the one tagged and with metadata (the explorer's Tag and Metadata filters).
    seeded.marker_id = _send(keel, seeded, key, GPT, f"The {MARKER} request: what is a {MARKER}?", 200,
                             {"x-keel-tags": "marker-tag,beta", "x-keel-metadata": '{"team": "payments"}'})
    for i in range(2):
        _send(keel, seeded, key, UNKNOWN_MODEL, f"Nobody serves this model ({i}).", 404)
    keel.mock.script(error_reply(500, "server_error", "the mock is down"))
    _send(keel, seeded, key, GPT, "This one meets an upstream outage.", 502)
    keel.mock.script(error_reply(429, "rate_limit_error", "slow down"))
    _send(keel, seeded, key, GPT, "This one is rate limited upstream.", 429)
    keel.mock.script(error_reply(400, "invalid_request_error", "the mock refuses this prompt"))
    _send(keel, seeded, key, CLAUDE, "This one the upstream refuses.", 400)
    keel.mock.reset()


_CASES = [("fr", "France", "Paris"), ("pe", "Peru", "Lima"), ("jp", "Japan", "Tokyo"), ("ke", "Kenya", "Nairobi")]
_REGRESSED = "jp"


def _eval_run(keel: Keel, seeded: Seeded, suite: Path, answers: list[str], label: str) -> str:
    """One `keel eval run` against the running keel (--url), stored in its store (--config: the same file)."""
    keel.mock.reset()
    keel.mock.script(*(text_reply(a) for a in answers))  # concurrency 1: the cases ask in dataset order
    out = keel.work / f"eval-{label}.json"
    args = [str(keel_ui.binary("KEEL_BIN", "keel")), "eval", "run", str(suite), "--config", str(keel.config),
            "--url", keel.url, "--api-key", seeded.eval_key, "--json", str(out)]
    done = subprocess.run(args, env=keel_ui.keel_env(), capture_output=True, text=True, timeout=120,
                          cwd=keel_ui.REPO)
    assert done.returncode == 0, f"keel eval run ({label}) exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert out.is_file(), f"keel eval run ({label}) wrote no JSON report:\n{done.stdout}\n{done.stderr}"
    report = json.loads(out.read_text())
    run_id = report["run"]["id"]
    seeded.requests += len(answers)
    seeded.by_model[GPT] = seeded.by_model.get(GPT, 0) + len(answers)
    seeded.by_status[200] = seeded.by_status.get(200, 0) + len(answers)
    return run_id


def _seed_evals(keel: Keel, seeded: Seeded) -> None:
    """Two runs of a 4-case exact-match suite: all right, then the Japan case answered wrong."""
    seeded.eval_key = keel.create_key(EVAL_KEY_NAME)["key"]
    (keel.work / "capitals.jsonl").write_text(
        "".join(json.dumps({"id": i, "country": c, "capital": cap}) + "\n" for i, c, cap in _CASES))
    suite = keel.work / "capitals.toml"
    suite.write_text(f"""\
name = "{SUITE}"
dataset = "capitals.jsonl"
model = "{GPT}"
prompt = "What is the capital of {{{{ country }}}}? One word."
concurrency = 1

[[checks]]
type = "exact"
expected = "{{{{ capital }}}}"
""")
    right = [cap for _, _, cap in _CASES]
    wrong = [("Osaka" if i == _REGRESSED else cap) for i, _, cap in _CASES]
    seeded.runs = [_eval_run(keel, seeded, suite, right, "baseline"), _eval_run(keel, seeded, suite, wrong, "candidate")]
    seeded.regressed_case = _REGRESSED
    keel.mock.reset()


@pytest.fixture(scope="session")
def collection(keel) -> dict:
    """`keel ingest` of seven Node.js API documents into COLLECTION, with the running keel's configuration (its
    [rag] directory; the server sees the new collection on its next read); `keel ingest --json`'s summary."""
    files = [NODE_DOCS / f for f in COLLECTION_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    assert not missing, f"the seed documents are missing: {missing}"
    args = [str(keel_ui.binary("KEEL_BIN", "keel")), "ingest", COLLECTION, *map(str, files), "--config",
            str(keel.config), "--json"]
    done = subprocess.run(args, env=keel_ui.keel_env(), capture_output=True, text=True, timeout=300,
                          cwd=keel_ui.REPO)
    assert done.returncode == 0, f"keel ingest exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def seeded(keel) -> Seeded:
    """Seeds once per session, then checks that the log holds exactly the seeded rows."""
    s = Seeded()
    _seed_requests(keel, s)
    _seed_evals(keel, s)
    deadline = time.monotonic() + 10
    while len(rows := keel.log_rows()) < s.requests and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(rows) == s.requests, f"the log holds {len(rows)} rows, {s.requests} requests were seeded"
    return s


# --------------------------------------------------------------------------------------------- the browser


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(keel_ui.CHROMIUM).is_file():
        pytest.fail(f"{keel_ui.CHROMIUM} not found: `apt-get install chromium` (Debian's package; the tests never "
                    "download a browser)", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=keel_ui.CHROMIUM, args=keel_ui.CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser, keel):
    """A fresh browser profile (no cookies) per test, 1280×800."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=keel.url)
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context, request):
    pg = context.new_page()
    request.node.stash[_PAGE] = pg
    yield pg


@pytest.fixture
def ui(keel, seeded, request) -> Ui:
    request.node.stash[_LOG_OFFSETS] = [(p, p.log_size()) for p in _PROCESSES]
    return Ui(keel)


@pytest.fixture
def signed_in(ui, page):
    """A page signed in with the admin key, on the overview. Without a dashboard the page stays blank: the test's
    first `ui.open` then fails it with the reason (a failure, not a setup error)."""
    if keel_ui.dashboard_missing(ui.url) is None:
        ui.sign_in(page)
    return page


# --------------------------------------------------------------------------------------------- order

# A person's path through the dashboard; the pages that count requests come before the keys test adds some.
_ORDER = ["test_ui_seed", "test_ui_login", "test_ui_overview", "test_ui_requests", "test_ui_evals",
          "test_ui_collections", "test_ui_keys", "test_ui_timing"]


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        module = item.module.__name__.rsplit(".", 1)[-1]
        return _ORDER.index(module) if module in _ORDER else len(_ORDER)

    items.sort(key=rank)  # stable: the order within a file is kept


# --------------------------------------------------------------------------------------------- reporting

_LOG_OFFSETS = pytest.StashKey[list]()
_PAGE = pytest.StashKey[object]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test: a screenshot of where its page was (artifacts/failed-TEST.png), and what keel logged."""
    report = yield
    if report.failed and call.when == "call":
        pg = item.stash.get(_PAGE, None)
        if pg is not None and not pg.is_closed() and pg.url != "about:blank":
            try:
                keel_ui.ARTIFACTS.mkdir(parents=True, exist_ok=True)
                shot = keel_ui.ARTIFACTS / f"failed-{item.name}.png"
                pg.screenshot(path=str(shot), full_page=True)
                report.sections.append(("screenshot", f"{shot} (page at {pg.url})"))
            except Exception as e:  # noqa: BLE001 - a screenshot must not hide the failure
                report.sections.append(("screenshot", f"none: {e}"))
        for p, start in item.stash.get(_LOG_OFFSETS, []):
            logged = p.log_text(start).strip()
            status = "running" if p.proc.poll() is None else f"exited with code {p.proc.returncode}"
            if logged or p.proc.poll() is not None:
                report.sections.append((f"{p.name} stderr during this test ({status})", logged[-8000:] or "(nothing)"))
    return report


def pytest_terminal_summary(terminalreporter):
    if keel_ui.TIMINGS:
        terminalreporter.section("dashboard page timings (median of 3 loads after a warm-up)")
        for line in keel_ui.TIMINGS:
            terminalreporter.write_line(line)
