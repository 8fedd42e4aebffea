"""Session fixtures: a `keel-mock-upstream` and a `keel serve` routed to it, plus SDK clients.

Binaries come from $KEEL_BIN / $KEEL_MOCK_BIN, else $CARGO_TARGET_DIR/debug (default ~/.cache/keel-target),
else ./target/debug. Both processes log to files; a failing test shows what they logged during the test.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import anthropic
import openai
import pytest

from upstream import CLIENT_KEY, UPSTREAM_KEY, MockUpstream, httpx

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 20


# --------------------------------------------------------------------------------------------- binaries


def _binary(env_var: str, name: str) -> Path:
    candidates: list[Path] = []
    if os.environ.get(env_var):
        candidates.append(Path(os.environ[env_var]))
    target = Path(os.environ.get("CARGO_TARGET_DIR") or Path.home() / ".cache" / "keel-target")
    candidates += [target / "debug" / name, REPO / "target" / "debug" / name]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    tried = "\n  ".join(str(p) for p in candidates)
    pytest.fail(f"{name} binary not found (set ${env_var} or build it with cargo). Tried:\n  {tried}",
                pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Process:
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


_PROCESSES: list[_Process] = []


def _start_mock(log_dir: Path) -> tuple[_Process, str]:
    binary = _binary("KEEL_MOCK_BIN", "keel-mock-upstream")
    p = _Process("keel-mock-upstream", [str(binary), "--listen", "127.0.0.1:0"], log_dir, stdout=subprocess.PIPE)
    _PROCESSES.append(p)
    assert p.proc.stdout is not None
    ready, _, _ = select.select([p.proc.stdout], [], [], STARTUP_TIMEOUT_S)
    line = p.proc.stdout.readline().decode().strip() if ready else ""
    prefix = "listening on "
    if not line.startswith(prefix):
        p.stop()
        pytest.fail(f"keel-mock-upstream did not announce its address (got {line!r}).\n{p.died()}", pytrace=False)
    return p, line[len(prefix):]


def _write_config(path: Path, mock_url: str) -> None:
    # One attempt per request: these tests check what the SDKs see of each upstream outcome; retries and
    # fallbacks are the Rust reliability suite's subject. The request log keeps full bodies in a database of
    # this session's own; mock-gpt has a price so that cost accounting can be checked.
    path.write_text(f"""\
[reliability]
max_attempts = 1

# The operator's own machine: /admin/* without the admin key, on this loopback listener only.
[auth]
open_admin_on_loopback = true

[store]
url = "sqlite://{path.parent}/keel.db"

[log]
bodies = "full"

[prices.mock-gpt]
input = 2.0
output = 8.0
cached_input = 1.0

[providers.oa]
kind = "openai"
base_url = "{mock_url}/v1"
api_key_env = "MOCK_KEY"

[providers.an]
kind = "anthropic"
base_url = "{mock_url}"
api_key_env = "MOCK_KEY"

[models.gpt-test]
provider = "oa"
model = "mock-gpt"

[models.claude-test]
provider = "an"
model = "mock-claude"

[models.embed-test]
provider = "oa"
model = "mock-embed"

# Guardrails on these two aliases only (test_guard.py): injections refused, personal data redacted before it
# leaves, answers carrying secrets withheld.
[models.gpt-guarded]
provider = "oa"
model = "mock-gpt"
guard = {{ injection = "block", pii = "redact", output = "block" }}

[models.claude-guarded]
provider = "an"
model = "mock-claude"
guard = {{ injection = "block", pii = "redact", output = "block" }}

# Anthropic first; what Anthropic cannot express (n > 1) falls over to the OpenAI upstream.
[models.claude-then-gpt]
provider = "an"
model = "mock-claude"
fallbacks = ["gpt-test"]

# Prompt templates (test_templates.py): called by name with variables, from either SDK.
[templates.capital]
model = "gpt-test"
system = "Answer with the city only."
prompt = "What is the capital of {{{{ country }}}}?{{% if hint %}} Hint: {{{{ hint }}}}.{{% endif %}}"
temperature = 0.0
max_tokens = 20

[templates.label]
model = "claude-test"
prompt = "Label this ticket: {{{{ ticket }}}}"
response_schema = '{{"type": "object", "properties": {{"label": {{"type": "string"}}}}, "required": ["label"]}}'

# Routers (test_routing.py): rules by task, and a cascade that asks the cheaper model first and escalates an
# answer that is not one of the labels.
[prices.mock-mini]
input = 0.5
output = 1.0

[models.gpt-mini]
provider = "oa"
model = "mock-mini"

[routers.auto]
default = "gpt-test"
rules = [{{ to = "gpt-mini", tasks = ["classification"] }}, {{ to = "sentiment", tags = ["reviews"] }}]

[routers.sentiment]
cascade = ["gpt-mini", "gpt-test"]
check = {{ type = "labels", labels = ["positive", "negative", "neutral"] }}

# Online evaluation (test_feedback.py): every answer of the capital template is checked off the request path,
# its score stored as feedback of source "check".
[online_evals.capital-one-word]
template = "capital"
sample = 1.0
check = {{ type = "regex", pattern = '^\\W*\\w+\\W*$' }}
""")


def _serve(name: str, config: Path, log_dir: Path, extra_env: dict[str, str] | None = None,
           timeout_s: float = STARTUP_TIMEOUT_S) -> tuple[_Process, str]:
    """Starts `keel serve --config CONFIG` on a free port (provider keys from the environment left out, the
    mock's key set) and waits for GET /health."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "KEEL_CONFIG"}
    env["MOCK_KEY"] = UPSTREAM_KEY
    env.setdefault("RUST_LOG", "info")
    env.update(extra_env or {})
    args = [str(_binary("KEEL_BIN", "keel")), "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    p = _Process(name, args, log_dir, env=env)
    _PROCESSES.append(p)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
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
    pytest.fail(f"keel did not answer GET /health within {timeout_s}s.\n{p.log_text()}", pytrace=False)


def _start_keel(log_dir: Path, mock_url: str) -> tuple[_Process, str]:
    config = log_dir / "keel.toml"
    _write_config(config, mock_url)
    return _serve("keel", config, log_dir)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def _servers(tmp_path_factory) -> Iterator[tuple[MockUpstream, str]]:
    log_dir = tmp_path_factory.mktemp("keel-sdk")
    try:
        _, mock_url = _start_mock(log_dir)
        _, keel_url = _start_keel(log_dir, mock_url)
        mock = MockUpstream(mock_url)
        yield mock, keel_url
        mock.close()
    finally:
        for p in reversed(_PROCESSES):
            p.stop()
        _PROCESSES.clear()


@pytest.fixture(scope="session")
def keel_url(_servers) -> str:
    return _servers[1]


@pytest.fixture
def mock(_servers, request) -> MockUpstream:
    """The mock upstream, reset: empty script, echo default, no recorded attempts."""
    upstream = _servers[0]
    upstream.reset()
    request.node.stash[_LOG_OFFSETS] = [(p, p.log_size()) for p in _PROCESSES]
    return upstream


@pytest.fixture
def oai(keel_url, mock) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{keel_url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
    yield client
    client.close()


@pytest.fixture
def anth(keel_url, mock) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=keel_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
    yield client
    client.close()


@pytest.fixture
def http(keel_url, mock) -> Iterator[httpx.Client]:
    """A raw HTTP client for what the SDKs cannot send (malformed JSON)."""
    with httpx.Client(base_url=keel_url, timeout=30) as client:
        yield client


# --------------------------------------------------------------------------------------------- failure logs

_LOG_OFFSETS = pytest.StashKey[list]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for p, start in item.stash.get(_LOG_OFFSETS, []):
            logged = p.log_text(start).strip()
            status = "running" if p.proc.poll() is None else f"exited with code {p.proc.returncode}"
            report.sections.append((f"{p.name} stderr during this test ({status})", logged or "(nothing)"))
    return report
