"""Scripting `keel-mock-upstream` over its `/_mock/*` control endpoints, and what the mock answers.

The reply JSON is the serde form of `keel_testkit::Reply` (crates/testkit/src/reply.rs): every field is
optional; `body` and `fault` are externally tagged snake_case enums, e.g. `{"text": "hi"}`,
`{"tool_calls": [...]}`, `{"cut_after_chunks": 3}`, `"no_done"`.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Any

import pytest

try:  # the openai 3.x / anthropic 2.x SDKs ship on httpx2
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older stacks
    import httpx  # type: ignore[no-redef]

UPSTREAM_KEY = "test-upstream-key"  # MOCK_KEY in keel's environment
CLIENT_KEY = "client-key"  # what the SDK clients send to keel

# --------------------------------------------------------------------------------------------- routes


@dataclass(frozen=True)
class Route:
    """A model alias of the test config and the upstream that serves it."""

    alias: str
    provider: str
    upstream_model: str
    upstream_kind: str  # "openai" or "anthropic": the upstream's wire format
    upstream_path: str

    @property
    def served_by(self) -> str:
        return f"{self.provider}/{self.upstream_model}"

    @property
    def openai_upstream(self) -> bool:
        return self.upstream_kind == "openai"


GPT = Route("gpt-test", "oa", "mock-gpt", "openai", "/v1/chat/completions")
CLAUDE = Route("claude-test", "an", "mock-claude", "anthropic", "/v1/messages")
EMBED = Route("embed-test", "oa", "mock-embed", "openai", "/v1/embeddings")
CHAT_ROUTES = [pytest.param(GPT, id="openai-upstream"), pytest.param(CLAUDE, id="anthropic-upstream")]


# --------------------------------------------------------------------------------------------- replies


def reply(body: Any = "echo", *, status: int = 200, headers: dict[str, str] | None = None,
          fault: Any = None, **delays: int) -> dict[str, Any]:
    """One scripted reply. `delays` are the `*_ms` fields (delay_before_headers_ms, chunk_delay_ms, ...)."""
    out: dict[str, Any] = {"status": status, "body": body, "headers": list((headers or {}).items())}
    if fault is not None:
        out["fault"] = fault
    out.update(delays)
    return out


def echo(**kw: Any) -> dict[str, Any]:
    return reply("echo", **kw)


def text(answer: str, **kw: Any) -> dict[str, Any]:
    return reply({"text": answer}, **kw)


def tool_calls(*calls: tuple[str, str, str], **kw: Any) -> dict[str, Any]:
    """Tool calls given as (id, name, arguments JSON text)."""
    body = {"tool_calls": [{"id": i, "name": n, "arguments": a} for i, n, a in calls]}
    return reply(body, **kw)


def error(status: int, kind: str, message: str, code: str | None = None, **kw: Any) -> dict[str, Any]:
    """An error body in the endpoint's own format (OpenAI or Anthropic)."""
    return reply({"error": {"kind": kind, "message": message, "code": code}}, status=status, **kw)


def json_body(value: Any, status: int = 200, **kw: Any) -> dict[str, Any]:
    return reply({"json": value}, status=status, **kw)


def raw(status: int, content_type: str, body: str, **kw: Any) -> dict[str, Any]:
    return reply({"raw": {"content_type": content_type, "body": body}}, status=status, **kw)


def cut_after(n: int) -> dict[str, int]:
    return {"cut_after_chunks": n}


def malformed_at(n: int) -> dict[str, int]:
    return {"malformed_chunk_at": n}


NO_DONE = "no_done"
RESET_BEFORE_HEADERS = "reset_before_headers"

# --------------------------------------------------------------------------------------------- control


@dataclass
class Attempt:
    """One request the mock received."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: Any
    at_ms: int

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def header_values(self) -> list[str]:
        return [v for _, v in self.headers]


class MockUpstream:
    """Client of the mock's control endpoints."""

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

    def set_default(self, one: dict[str, Any]) -> None:
        self._post("/_mock/default", one)

    def attempts(self) -> list[Attempt]:
        resp = self._http.get("/_mock/attempts")
        resp.raise_for_status()
        return [Attempt(a["method"], a["path"], [tuple(h) for h in a["headers"]], a["body"], a["at_ms"])
                for a in resp.json()]

    def only_attempt(self) -> Attempt:
        """The single upstream request of the test; fails when keel sent none or several."""
        attempts = self.attempts()
        assert len(attempts) == 1, f"expected exactly one upstream request, got {len(attempts)}: {attempts}"
        return attempts[0]

    def close(self) -> None:
        self._http.close()


# --------------------------------------------------------------------------------------------- mock maths


def words(s: str) -> int:
    """The mock's token count: whitespace-separated words."""
    return len(s.split())


def word_pieces(s: str) -> list[str]:
    """How the mock streams a text: one piece per word, each keeping its trailing whitespace."""
    pieces: list[str] = []
    start, in_word, seen_word = 0, False, False
    for i, c in enumerate(s):
        space = c.isspace()
        if not space and not in_word and seen_word:
            pieces.append(s[start:i])
            start = i
        in_word = not space
        seen_word |= not space
    if start < len(s):
        pieces.append(s[start:])
    return pieces


_MASK = (1 << 64) - 1


def f32(x: float) -> float:
    """`x` rounded to the nearest 32-bit float, as the mock's vectors are."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def mock_embedding(text_in: str, dimensions: int = 8) -> list[float]:
    """The mock's deterministic embedding (crates/testkit/src/openai.rs `embed`), recomputed independently:
    FNV-1a of the text seeds a splitmix64 sequence, mapped to [-1, 1), L2-normalised, cast to f32."""
    state = 0xCBF29CE484222325
    for b in text_in.encode():
        state = ((state ^ b) * 0x00000100000001B3) & _MASK
    raw_values = []
    for _ in range(dimensions):
        state = (state + 0x9E3779B97F4A7C15) & _MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        z ^= z >> 31
        raw_values.append((z >> 11) / float(1 << 53) * 2.0 - 1.0)
    norm = math.sqrt(sum(x * x for x in raw_values)) or 1.0
    return [f32(x / norm) for x in raw_values]


def as_f32(values: list[float]) -> list[float]:
    return [f32(v) for v in values]


def base64_f32(values: list[float]) -> str:
    """Vectors as OpenAI sends them for `encoding_format: "base64"`: little-endian float32, base64."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
