"""What the dashboard tests share: the processes they start, the mock's control API, the data they seed, and the
`Ui` helper that opens dashboard pages (failing with one clear line when keel does not serve /ui), signs in,
takes screenshots and measures page timings.

A module of its own (not `conftest`) so that test files can import it by a name no other test directory uses.
"""

from __future__ import annotations

import os
import re
import select
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

try:  # the SDK tests' stack ships httpx2 (the successor of httpx); either works here
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # full-page PNGs: what CI keeps
CHROMIUM = os.environ.get("KEEL_UI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
STARTUP_TIMEOUT_S = 30

ADMIN_KEY = "ui-admin-key-123"
UPSTREAM_KEY = "ui-upstream-key"  # MOCK_KEY in keel's environment
GPT = "gpt-test"  # the two aliases on the mock
CLAUDE = "claude-test"
UNKNOWN_MODEL = "no-such-model"
SEED_KEY_NAME = "ui-seed"
EVAL_KEY_NAME = "ui-eval"
MARKER = "quokkamarker"  # a word only the detail request's prompt holds
SUITE = "ui-capitals"
COLLECTION = "node-docs"  # seeded with `keel ingest` from ../shared/data (Node.js 18 API docs)
NODE_DOCS = REPO.parent / "shared" / "data" / "rag-docs-nodejs-18-api" / "files"
COLLECTION_FILES = ["corepack.md", "debugger.md", "documentation.md", "punycode.md", "querystring.md",
                    "string_decoder.md", "dns.md"]
LONG_DOCUMENT = "dns.md"  # more chunks than a page shows (50): the document page's pager
EMBED = "all-minilm-l6-v2"  # keel's local embeddings model (`keel models pull`)
KEY_SECRET = re.compile(r"sk-keel-[0-9A-Za-z]{32}")  # crates/limits/src/keys.rs: `sk-keel-` + 32 base-62


# --------------------------------------------------------------------------------------------- processes


def binary(env_var: str, name: str) -> Path:
    candidates: list[Path] = []
    if os.environ.get(env_var):
        candidates.append(Path(os.environ[env_var]))
    target = Path(os.environ.get("CARGO_TARGET_DIR") or Path.home() / ".cache" / "keel-target")
    candidates += [target / "debug" / name, REPO / "target" / "debug" / name]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    tried = "\n  ".join(str(p) for p in candidates)
    pytest.fail(f"{name} binary not found (set ${env_var} or build it with cargo). Tried:\n  {tried}", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process whose stderr goes to a file, so a failing test can show what it logged."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 stdout=subprocess.DEVNULL) -> None:
        self.name = name
        self.log = log_dir / f"{name}.stderr.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(args, stdout=stdout, stderr=self._log_file, env=env, cwd=REPO)

    def log_text(self, start: int = 0) -> str:
        with self.log.open("rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    def log_size(self) -> int:
        return self.log.stat().st_size

    def died(self) -> str:
        return f"{self.name} exited with code {self.proc.returncode}; its stderr:\n{self.log_text()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log_file.close()


def start_mock(log_dir: Path) -> tuple[Process, str]:
    p = Process("keel-mock-upstream", [str(binary("KEEL_MOCK_BIN", "keel-mock-upstream")), "--listen", "127.0.0.1:0"],
                log_dir, stdout=subprocess.PIPE)
    assert p.proc.stdout is not None
    ready, _, _ = select.select([p.proc.stdout], [], [], STARTUP_TIMEOUT_S)
    line = p.proc.stdout.readline().decode().strip() if ready else ""
    prefix = "listening on "
    if not line.startswith(prefix):
        p.stop()
        pytest.fail(f"keel-mock-upstream did not announce its address (got {line!r}).\n{p.died()}", pytrace=False)
    return p, line[len(prefix):]


def keel_env() -> dict[str, str]:
    """keel's environment: no provider keys of the developer's, the mock's key and the admin key."""
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_API_KEY") and k not in ("KEEL_CONFIG", "KEEL_URL", "KEEL_ADMIN_KEY")}
    env["MOCK_KEY"] = UPSTREAM_KEY
    env["KEEL_ADMIN_KEY"] = ADMIN_KEY
    env.setdefault("RUST_LOG", "info")
    return env


def write_config(path: Path, mock_url: str) -> None:
    # Keys required, the admin key from KEEL_ADMIN_KEY; one attempt per request (a scripted upstream error is the
    # request's outcome, not a retry's); the log commits a row before its answer goes out (`committed`), so what
    # a client was answered is in the log the dashboard reads, with full bodies.
    path.write_text(f"""\
[reliability]
max_attempts = 1

[auth]
enabled = true
admin_key_env = "KEEL_ADMIN_KEY"

[store]
url = "sqlite://{path.parent}/keel.db"

[log]
bodies = "full"
acknowledge = "committed"

[prices.mock-gpt]
input = 2.0
output = 8.0

[prices.mock-claude]
input = 3.0
output = 15.0

[providers.oa]
kind = "openai"
base_url = "{mock_url}/v1"
api_key_env = "MOCK_KEY"

[providers.an]
kind = "anthropic"
base_url = "{mock_url}"
api_key_env = "MOCK_KEY"

[models.{GPT}]
provider = "oa"
model = "mock-gpt"

[models.{CLAUDE}]
provider = "an"
model = "mock-claude"

# Collections (the dashboard's Collections pages): keel's local MiniLM embeds documents and queries.
[providers.local]
kind = "local"

[models.{EMBED}]
provider = "local"
model = "{EMBED}"

[rag]
model = "{EMBED}"
dir = "{path.parent}/collections"
""")


def serve(config: Path, log_dir: Path) -> tuple[Process, str]:
    """`keel serve --config CONFIG` on a free port; waits for GET /health."""
    port = free_port()
    args = [str(binary("KEEL_BIN", "keel")), "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    p = Process("keel", args, log_dir, env=keel_env())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if p.proc.poll() is not None:
            pytest.fail(f"keel did not start.\n{p.died()}", pytrace=False)
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return p, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    p.stop()
    pytest.fail(f"keel did not answer GET /health within {STARTUP_TIMEOUT_S}s.\n{p.log_text()}", pytrace=False)


# --------------------------------------------------------------------------------------------- the mock


def text_reply(answer: str) -> dict[str, Any]:
    """A scripted reply (the serde form of keel_testkit::Reply, as tests/sdk/upstream.py writes it)."""
    return {"status": 200, "body": {"text": answer}, "headers": []}


def error_reply(status: int, kind: str, message: str) -> dict[str, Any]:
    return {"status": status, "body": {"error": {"kind": kind, "message": message, "code": None}}, "headers": []}


class Mock:
    """Client of keel-mock-upstream's /_mock/* control endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=10)

    def _post(self, path: str, payload: Any) -> None:
        resp = self._http.post(path, json=payload)
        assert resp.status_code == 200, f"mock control {path} failed: {resp.status_code} {resp.text}"

    def reset(self) -> None:
        self._post("/_mock/reset", {})

    def script(self, *replies: dict[str, Any]) -> None:
        """Queue replies: each upstream request takes the next one (echo once the queue is empty)."""
        self._post("/_mock/script", list(replies))

    def close(self) -> None:
        self._http.close()


# --------------------------------------------------------------------------------------------- the server


@dataclass
class Keel:
    """The running keel, its configuration (whose store the dashboard reads) and an admin client."""

    url: str
    config: Path
    work: Path
    process: Process
    mock: Mock
    admin: Any  # an httpx Client with the admin key

    def chat(self, key: str, model: str, prompt: str, headers: dict[str, str] | None = None) -> Any:
        return httpx.post(f"{self.url}/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {key}", **(headers or {})},
                          json={"model": model, "messages": [{"role": "user", "content": prompt}]})

    def create_key(self, name: str, **fields: Any) -> dict[str, Any]:
        resp = self.admin.post("/admin/keys", json={"name": name, **fields})
        assert resp.status_code == 201, f"POST /admin/keys: {resp.status_code} {resp.text}"
        return resp.json()

    def keys(self) -> list[dict[str, Any]]:
        resp = self.admin.get("/admin/keys")
        assert resp.status_code == 200, resp.text
        return resp.json()["data"]

    def log_rows(self, **params: Any) -> list[dict[str, Any]]:
        resp = self.admin.get("/admin/requests", params={"limit": 10000, **params})
        assert resp.status_code == 200, f"GET /admin/requests: {resp.status_code} {resp.text}"
        return resp.json()["data"]


# --------------------------------------------------------------------------------------------- seeded data


@dataclass
class Seeded:
    """What the session put in keel's store before the browser tests."""

    key_id: str = ""
    key_name: str = SEED_KEY_NAME
    eval_key: str = ""
    requests: int = 0  # every request sent to keel's API while seeding: each is one log row
    by_model: dict[str, int] = field(default_factory=dict)
    by_status: dict[int, int] = field(default_factory=dict)
    marker_id: str = ""  # keel's id of the request whose prompt holds MARKER
    runs: list[str] = field(default_factory=list)  # [baseline, candidate]
    regressed_case: str = ""


# --------------------------------------------------------------------------------------------- the dashboard

_PROBE: dict[str, str | None] = {}


def dashboard_missing(url: str) -> str | None:
    """Why keel does not serve the dashboard (None when it does): probed once per session on GET /ui/login."""
    if url not in _PROBE:
        try:
            resp = httpx.get(f"{url}/ui/login", timeout=10)
            ctype = resp.headers.get("content-type", "")
            if resp.status_code == 200 and ctype.startswith("text/html"):
                _PROBE[url] = None
            else:
                _PROBE[url] = (f"keel does not serve the dashboard: GET /ui/login answered {resp.status_code} "
                               f"({ctype or 'no content-type'}) {resp.text[:160]!r}")
        except httpx.HTTPError as e:
            _PROBE[url] = f"keel does not serve the dashboard: GET /ui/login failed: {e}"
    return _PROBE[url]


@dataclass
class Timing:
    page: str
    fcp_ms: float | None
    dcl_ms: float
    response_end_ms: float

    def line(self) -> str:
        fcp = "n/a" if self.fcp_ms is None else f"{self.fcp_ms:.0f}ms"
        return f"[ui] {self.page} fcp={fcp} dcl={self.dcl_ms:.0f}ms responseEnd={self.response_end_ms:.0f}ms"


TIMINGS: list[str] = []  # printed in the terminal summary

# First contentful paint, the navigation's DOMContentLoaded end and response end, in ms from navigation start.
# The paint entry can land just after `load`: wait for it with a buffered observer (3 s at most).
_TIMING_JS = """() => new Promise(resolve => {
  const nav = performance.getEntriesByType('navigation')[0];
  const done = fcp => resolve({fcp, dcl: nav.domContentLoadedEventEnd, responseEnd: nav.responseEnd});
  const seen = performance.getEntriesByName('first-contentful-paint')[0];
  if (seen) return done(seen.startTime);
  new PerformanceObserver((list, obs) => {
    const e = list.getEntriesByName('first-contentful-paint')[0];
    if (e) { obs.disconnect(); done(e.startTime); }
  }).observe({type: 'paint', buffered: true});
  setTimeout(() => done(null), 3000);
})"""


class Ui:
    """Opens dashboard pages of the session's keel in a Playwright page."""

    def __init__(self, keel: Keel) -> None:
        self.keel = keel
        self.url = keel.url

    def require(self) -> None:
        """Fails the test (not an error, not a skip) with one line when keel serves no dashboard."""
        why = dashboard_missing(self.url)
        if why:
            pytest.fail(why, pytrace=False)

    def open(self, page, path: str, status: int = 200):
        """page.goto(path) (redirects followed); the final response must have `status`."""
        self.require()
        resp = page.goto(self.url + path)
        assert resp is not None, f"no response for {path}"
        assert resp.status == status, f"GET {path}: expected {status}, got {resp.status} at {resp.url}"
        return resp

    def sign_in(self, page, key: str = ADMIN_KEY) -> None:
        """The login form, as a person fills it; ends on the overview."""
        from playwright.sync_api import expect

        self.open(page, "/ui/login")
        page.get_by_label("Admin key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(re.compile(r"/ui/?(\?.*)?$"))
        expect(page.get_by_role("heading", level=1, name="Overview")).to_be_visible()

    def shot(self, page, name: str) -> Path:
        """A full-page PNG in tests/ui/artifacts/NAME.png (CI keeps that directory)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    def timing(self, page, name: str, path: str, loads: int = 3) -> Timing:
        """One warm-up load of `path`, then `loads` measured ones; the median of each measure."""
        self.open(page, path)  # warm-up: the browser's and keel's caches, the connection
        samples = []
        for _ in range(loads):
            self.open(page, path)
            page.wait_for_load_state("load")
            samples.append(page.evaluate(_TIMING_JS))
        fcps = [s["fcp"] for s in samples if s["fcp"] is not None]
        t = Timing(name, statistics.median(fcps) if fcps else None,
                   statistics.median(s["dcl"] for s in samples),
                   statistics.median(s["responseEnd"] for s in samples))
        TIMINGS.append(t.line())
        return t


# --------------------------------------------------------------------------------------------- page reading


def number(text: str) -> float:
    """The first number in a text ("1,234", "15.8 %", "$0.0012"), thousands separators (",", " ", thin and
    narrow spaces) dropped."""
    cleaned = re.sub(r"(?<=\d)[,\u00a0\u2009\u202f ](?=\d{3})", "", text)
    m = re.search(r"-?\d+(?:\.\d+)?", cleaned)
    assert m, f"no number in {text!r}"
    return float(m.group())


def column(table, header: str) -> list[str]:
    """The texts of one column of a table (by its header's text), one per body row."""
    headers = [h.strip().lower() for h in table.locator("thead th, thead td").all_inner_texts()]
    if not headers:  # no <thead>: the first row's header cells
        headers = [h.strip().lower() for h in table.locator("tr").first.locator("th").all_inner_texts()]
    assert header.lower() in headers, f"no column {header!r} in {headers}"
    i = headers.index(header.lower())
    rows = table.locator("tbody tr")
    return [rows.nth(r).locator("th, td").nth(i).inner_text().strip() for r in range(rows.count())]


def set_field(locator, value: str | list[str]) -> None:
    """Fills a form control whatever it is: a <select> (Playwright matches a string against both the options'
    values and labels) or an input (a list as comma-separated text)."""
    if locator.evaluate("e => e.tagName.toLowerCase()") == "select":
        locator.select_option(value)
    else:
        locator.fill(",".join(value) if isinstance(value, list) else value)
