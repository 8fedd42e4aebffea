"""A keel cluster on loopback: three `keel serve` processes behind a real HAProxy, sharing one PostgreSQL
database and one Redis, in front of `keel-mock-upstream`s (issue 18, item 4).

Per run (module scope, so every test of `test_three_instances.py` shares it):
- a fresh PostgreSQL database `keel_scale_<pid>` on 127.0.0.1:5432 (trust auth, user postgres), dropped at the end;
- a private `redis-server` on a free port (keel's counters, revocations, exact cache, breaker channel), so nothing
  collides with other tests or the machine's shared Redis;
- three mock upstreams: `main` (every alias but the breaker test's), `a` (the breaker test's failing target),
  `b` (its fallback), each recording what it received;
- three keel instances on their own ports, one configuration file for all of them;
- HAProxy (`/usr/sbin/haproxy`, Debian's package) in front of them, its configuration generated here.

Binaries come from $KEEL_BIN / $KEEL_MOCK_BIN, else $CARGO_TARGET_DIR/debug (default ~/.cache/keel-target), else
./target/debug. Every process logs to a file; a failing test shows what each logged during it.

The mock's control client and reply builders are imported from tests/sdk/upstream.py (a plain module). The process
helpers are small copies of tests/sdk/conftest.py's: importing that file would load a second module named
`conftest` with the SDK suite's session fixtures and hooks.
"""

from __future__ import annotations

import csv
import io
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "sdk"))

from upstream import UPSTREAM_KEY, MockUpstream, httpx  # noqa: E402  (tests/sdk on the path first)

STARTUP_TIMEOUT_S = 60
ADMIN_KEY = "admin-secret-for-scale"
INSTANCES = 3
PG = {"host": "127.0.0.1", "port": "5432", "user": "postgres"}


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
    """A child process whose stderr (and, unless piped, stdout) goes to a file."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 stdout=None) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log_file if stdout is None else stdout,
                                     stderr=self._log_file, env=env, cwd=REPO)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self, start: int = 0) -> str:
        with self.log.open("rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    def log_size(self) -> int:
        return self.log.stat().st_size

    def died(self) -> str:
        return f"{self.name} exited with code {self.proc.returncode}; its output:\n{self.log_text()[-8000:]}"

    def kill9(self) -> None:
        """SIGKILL, to this process only (by its pid)."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout and not self.proc.stdout.closed and self.proc.stdout is not self._log_file:
            self.proc.stdout.close()
        self._log_file.close()


# --------------------------------------------------------------------------------------------- services


def psql(db: str, sql: str) -> str:
    """Runs `sql` on database `db` (unaligned, tuples only); fails the test with psql's error."""
    out = subprocess.run(["psql", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-d", db, "-v",
                          "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(f"psql failed on {db}: {sql}\n{out.stderr}")
    return out.stdout


class Redis:
    """A private redis-server on a free port, keeping nothing on disk."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.process = Process("redis", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no", "--dir", str(work)], work)
        deadline = time.monotonic() + 20
        while self.cli("ping") != "PONG":
            if not self.process.alive():
                pytest.fail(self.process.died(), pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not answer PING within 20 s", pytrace=False)
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    def keys(self, pattern: str) -> set[str]:
        out = subprocess.run(["redis-cli", "-p", str(self.port), "--scan", "--pattern", pattern],
                             capture_output=True, text=True, timeout=10)
        return {k for k in out.stdout.split() if k}


def start_mock(name: str, log_dir: Path) -> tuple[Process, MockUpstream]:
    p = Process(name, [str(binary("KEEL_MOCK_BIN", "keel-mock-upstream")), "--listen", "127.0.0.1:0"], log_dir,
                stdout=subprocess.PIPE)
    assert p.proc.stdout is not None
    ready, _, _ = select.select([p.proc.stdout], [], [], 20)
    line = p.proc.stdout.readline().decode().strip() if ready else ""
    prefix = "listening on "
    if not line.startswith(prefix):
        p.stop()
        pytest.fail(f"{name} did not announce its address (got {line!r}).\n{p.died()}", pytrace=False)
    return p, MockUpstream(line[len(prefix):])


# --------------------------------------------------------------------------------------------- keel


def keel_config(db_url: str, redis_url: str, mocks: dict[str, MockUpstream], acknowledge: bool) -> str:
    ack = 'acknowledge = "committed"\n' if acknowledge else ""
    return f"""\
# Generated by tests/scale/conftest.py: one file for the three instances (each gets --listen).

[server]
shutdown_grace_ms = 2000

# One attempt per target: a failure is one breaker failure and one fallback, nothing hidden by retries.
[reliability]
max_attempts = 1

[auth]
enabled = true
redis = "{redis_url}"
# Ten minutes of verification cache: a revoked key is refused elsewhere only through the Redis channel.
key_cache_ttl_ms = 600000

[store]
url = "{db_url}"

[log]
bodies = "none"
{ack}
[cache]
backend = "redis"
redis = "{redis_url}"
mode = "off"

[prices.mock-gpt]
input = 2.0
output = 8.0

[providers.oa]
kind = "openai"
base_url = "{mocks['main'].url}/v1"
api_key_env = "MOCK_KEY"

[providers.an]
kind = "anthropic"
base_url = "{mocks['main'].url}"
api_key_env = "MOCK_KEY"

[providers.pa]
kind = "openai"
base_url = "{mocks['a'].url}/v1"
api_key_env = "MOCK_KEY"

[providers.pb]
kind = "openai"
base_url = "{mocks['b'].url}/v1"
api_key_env = "MOCK_KEY"

[models.gpt-test]
provider = "oa"
model = "mock-gpt"

[models.claude-test]
provider = "an"
model = "mock-claude"

# The exact cache, on the shared Redis.
[models.gpt-cached]
provider = "oa"
model = "mock-gpt"
cache = {{ mode = "read-write", ttl_seconds = 600 }}

# The breaker test: target pa/mock-a (mock `a`), falling over to pb/mock-b (mock `b`). Three failures in a row
# open pa/mock-a's circuit for a minute, longer than the test.
[models.breaker-a]
provider = "pa"
model = "mock-a"
fallbacks = ["breaker-b"]
reliability = {{ max_attempts = 1, circuit = {{ consecutive_failures = 3, open_ms = 60000, min_requests = 1000 }} }}

[models.breaker-b]
provider = "pb"
model = "mock-b"
"""


def keel_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "KEEL_CONFIG"}
    env["MOCK_KEY"] = UPSTREAM_KEY
    env["KEEL_ADMIN_KEY"] = ADMIN_KEY
    env["KEEL_DATA_DIR"] = str(work / "data")
    env.setdefault("RUST_LOG", "info")
    return env


def config_check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary("KEEL_BIN", "keel")), "config", "check", str(config)], env=env,
                          capture_output=True, text=True, timeout=60)


@dataclass
class Instance:
    name: str
    url: str
    process: Process

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10, **kw)


def start_instances(config: Path, work: Path, env: dict[str, str]) -> list[Instance]:
    """Starts every instance at once (they migrate the fresh database concurrently: sqlx serialises that with an
    advisory lock), then waits for each one's GET /health."""
    out: list[Instance] = []
    for i in range(1, INSTANCES + 1):
        port = free_port()
        args = [str(binary("KEEL_BIN", "keel")), "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
        out.append(Instance(f"keel{i}", f"http://127.0.0.1:{port}", Process(f"keel{i}", args, work, env=env)))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    for inst in out:
        while True:
            if not inst.process.alive():
                pytest.fail(f"{inst.name} did not start.\n{inst.process.died()}", pytrace=False)
            try:
                if httpx.get(f"{inst.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{inst.name} did not answer /health within {STARTUP_TIMEOUT_S} s.\n"
                            f"{inst.process.log_text()[-8000:]}", pytrace=False)
            time.sleep(0.1)
    return out


# --------------------------------------------------------------------------------------------- HAProxy


def haproxy_config(port: int, instances: list[Instance], sock: Path) -> str:
    servers = "\n".join(f"    server {i.name} {i.url.removeprefix('http://')}" for i in instances)
    return f"""\
# Generated by tests/scale/conftest.py.
global
    log stderr format raw local0 info
    stats socket {sock} mode 600 level admin
    maxconn 1024

defaults
    mode http
    log global
    option httplog
    timeout connect 500ms
    timeout client 30s
    # Also the response-timeout retry's trigger: it must exceed the longest a healthy keel may take before its
    # first response byte (in production: max(provider request_timeout_ms, first_token_timeout_ms)), or slow but
    # healthy requests are run twice. The mock answers in milliseconds here.
    timeout server 30s
    timeout http-request 10s
    timeout queue 5s

    # Retries, and whether retrying a POST is safe here.
    #
    # conn-failure: the request never reached keel; retrying it anywhere is always safe.
    # empty-response: keel received the request and closed without one byte of answer (the kill -9 case). The
    #   client has seen nothing, so a replay gives it exactly one answer. What a replay can duplicate is cost, not
    #   an effect: a chat/messages/embeddings call changes nothing but spend. The dead instance may already have
    #   called the upstream (billed by the provider; its row, not acknowledged, may be missing or, with
    #   `[log] acknowledge = "committed"`, committed just before the crash: the replay then adds a second row,
    #   which over-counts spend, never loses an acknowledged row), and its budget reservation in Redis is left
    #   unsettled (over-reserves: refusals come early, budgets are never overspent). Both are on the safe side.
    # response-timeout: HAProxy gave up on a live instance and closes that connection; keel sees its client go,
    #   cancels the upstream call and logs the request as cut, so the replay is again one answer to the client
    #   and at most a partial upstream call extra. See `timeout server` above for keeping it to hung instances.
    # Requests that do have effects (POST/DELETE on /admin/*, /v1/files, /v1/vector_stores, /v1/feedback) must
    #   not be replayed after keel may have acted on them: `disable-l7-retry` below leaves them conn-failure only.
    # Streams: once keel's first byte reached HAProxy nothing is retried; a stream cut by a crash reaches the
    #   client as a cut connection (the chunked body never terminates), which every HTTP client reports.
    retries 2
    retry-on conn-failure empty-response response-timeout
    # A request can be replayed only when HAProxy holds all of it: wait for the whole (small, JSON) body before
    # choosing a server. Without this a body that came in a second packet makes the request unretryable.
    option http-buffer-request
    # Every retry goes to another server: a server that just failed to answer is likely dead.
    option redispatch 1

frontend api
    bind 127.0.0.1:{port}
    default_backend keel
    http-request disable-l7-retry unless METH_GET || {{ path /v1/chat/completions /v1/messages /v1/embeddings }}

backend keel
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    # A dead instance refuses connections: two failed checks 250 ms apart take it out. A live but briefly stalled
    # one (a loaded CI machine) is given 3 s to answer a check before it counts as failed.
    default-server check inter 250ms fastinter 100ms downinter 500ms fall 2 rise 2
    timeout check 3s
    # Which instance answered (for the tests; harmless in production).
    http-response set-header x-scale-server %s
{servers}
"""


class HAProxy:
    def __init__(self, instances: list[Instance], work: Path) -> None:
        self.port = free_port()
        self.sock = work / "haproxy.sock"
        self.config = work / "haproxy.cfg"
        self.config.write_text(haproxy_config(self.port, instances, self.sock))
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        check = subprocess.run([exe, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            pytest.fail(f"haproxy rejected its configuration:\n{check.stdout}{check.stderr}", pytrace=False)
        self.process = Process("haproxy", [exe, "-db", "-f", str(self.config)], work)
        self.url = f"http://127.0.0.1:{self.port}"
        self.wait_for(lambda s: len(s) == len(instances) and all(v == "UP" for v in s.values()), "every server UP")

    def command(self, cmd: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.sock))
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, str]:
        """Each backend server's status as HAProxy's checks see it (UP, DOWN, ...)."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r["status"].split()[0] for r in rows
                if r["pxname"] == "keel" and r["svname"] not in ("FRONTEND", "BACKEND")}

    def all_up(self) -> dict[str, str]:
        """Waits until HAProxy sees every server UP."""
        return self.wait_for(lambda s: bool(s) and all(v == "UP" for v in s.values()), "every server UP")

    def wait_for(self, ok, what: str, timeout_s: float = 20) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        state: dict[str, str] = {}
        while time.monotonic() < deadline:
            if not self.process.alive():
                pytest.fail(self.process.died(), pytrace=False)
            try:
                state = self.servers()
                if ok(state):
                    return state
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"HAProxy: not {what} within {timeout_s} s: {state}\n{self.process.log_text()[-4000:]}",
                    pytrace=False)


# --------------------------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    instances: list[Instance]
    lb: HAProxy
    redis: Redis
    db: str
    mocks: dict[str, MockUpstream]
    acknowledge: bool
    config: Path
    processes: list[Process] = field(default_factory=list)

    @property
    def lb_url(self) -> str:
        return self.lb.url

    def sql(self, query: str) -> list[list[str]]:
        return [line.split("|") for line in psql(self.db, query).splitlines() if line]

    def admin(self, inst: Instance | None = None) -> httpx.Client:
        base = (inst or self.instances[0]).url
        return httpx.Client(base_url=base, timeout=30, headers={"authorization": f"Bearer {ADMIN_KEY}"})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    for tool in ("redis-server", "redis-cli", "psql"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed", pytrace=False)
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        pytest.fail("haproxy is not installed (Debian package haproxy)", pytrace=False)
    work = tmp_path_factory.mktemp("keel-scale")
    (work / "data").mkdir()
    db = f"keel_scale_{os.getpid()}"
    processes: list[Process] = []
    created = False
    try:
        psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        psql("postgres", f"CREATE DATABASE {db}")
        created = True
        redis = Redis(work)
        processes.append(redis.process)
        mocks: dict[str, MockUpstream] = {}
        for name in ("main", "a", "b"):
            p, mocks[name] = start_mock(f"mock-{name}", work)
            processes.append(p)
        db_url = f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{db}"
        env = keel_env(work)
        config = work / "keel.toml"
        # `[log] acknowledge = "committed"` when this keel knows it (the kill -9 test needs it and says so when
        # it is missing); the other tests run either way.
        config.write_text(keel_config(db_url, redis.url, mocks, acknowledge=True))
        acknowledge = True
        checked = config_check(config, env)
        if checked.returncode != 0:
            config.write_text(keel_config(db_url, redis.url, mocks, acknowledge=False))
            plain = config_check(config, env)
            if plain.returncode != 0:
                pytest.fail(f"keel config check refused the harness's configuration:\n{plain.stdout}{plain.stderr}",
                            pytrace=False)
            acknowledge = False
            print(f"\n[scale] this keel refuses [log] acknowledge = \"committed\": {checked.stdout}{checked.stderr}")
        instances = start_instances(config, work, env)
        processes += [i.process for i in instances]
        lb = HAProxy(instances, work)
        processes.append(lb.process)
        c = Cluster(instances, lb, redis, db, mocks, acknowledge, config, processes)
        _CLUSTERS.append(c)
        yield c
    finally:
        _CLUSTERS.clear()
        for p in reversed(processes):
            p.stop()
        if created:
            psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


_CLUSTERS: list[Cluster] = []

# --------------------------------------------------------------------------------------------- failure logs

_LOG_OFFSETS = pytest.StashKey[list]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    item.stash[_LOG_OFFSETS] = [(p, p.log_size()) for c in _CLUSTERS for p in c.processes]
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and call.when == "call":
        for p, start in item.stash.get(_LOG_OFFSETS, []):
            logged = p.log_text(start).strip()
            status = "running" if p.alive() else f"exited with code {p.proc.returncode}"
            report.sections.append((f"{p.name} output during this test ({status})", logged[-6000:] or "(nothing)"))
    return report
