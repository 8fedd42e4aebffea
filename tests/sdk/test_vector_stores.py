"""The `openai` SDK's Files and vector stores APIs (`client.files`, `client.vector_stores.*`) against keel.

A keel of its own, with `[rag] model` set to the mock upstream's embeddings alias and its data directory in the
test's temporary directory. The mock's embeddings are hash vectors that carry no meaning, so the searches that
check ranking ask for keel's BM25 side (`extra_body={"mode": "bm25"}`); one hybrid search (the default) checks
that the default answers in the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import openai
import pytest

import conftest
from upstream import CLIENT_KEY, EMBED, httpx

ALPHA = b"# Alpha\n\nThe zebra migration crosses the Serengeti every year, followed by lions.\n"
BETA = b"# Beta\n\nA keelhaul flux capacitor needs careful calibration before each voyage.\n"
GAMMA = b"Lighthouse keepers record the weather and every passing ship in their logbook.\n"


@dataclass
class Keel:
    url: str
    process: conftest._Process


@pytest.fixture(scope="module")
def rag_keel(_servers, tmp_path_factory) -> Iterator[Keel]:
    mock, _ = _servers
    work = tmp_path_factory.mktemp("keel-vector-stores")
    config = work / "keel.toml"
    conftest._write_config(config, mock.url)
    text = config.read_text()
    assert "[rag]" not in text, "the session config now has [rag]: merge instead of appending"
    assert f"[models.{EMBED.alias}]" in text
    config.write_text(text + f'\n[rag]\nmodel = "{EMBED.alias}"\ndir = "{work}/collections"\n')
    p, url = conftest._serve("keel-vector-stores", config, work, {"KEEL_DATA_DIR": str(work / "data")})
    yield Keel(url, p)
    p.stop()


@pytest.fixture
def client(rag_keel, mock) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=f"{rag_keel.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
    yield c
    c.close()


def bm25(client: openai.OpenAI, store_id: str, query: str, **kw):
    return client.vector_stores.search(store_id, query=query, extra_body={"mode": "bm25"}, **kw).data


def test_a_vector_store_from_upload_to_delete(client):
    store = client.vector_stores.create(name="keel-docs", metadata={"team": "search"})
    assert store.id.startswith("vs_")
    assert (store.name, store.metadata, store.status) == ("keel-docs", {"team": "search"}, "completed")
    assert store.file_counts.total == 0

    # Two files in one batch: uploaded through /v1/files, added synchronously, polled once.
    batch = client.vector_stores.file_batches.upload_and_poll(
        store.id, files=[("alpha.md", ALPHA), ("beta.md", BETA)]
    )
    assert batch.object == "vector_store.files_batch"
    assert (batch.status, batch.file_counts.completed, batch.file_counts.failed) == ("completed", 2, 0)
    in_batch = client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id).data
    assert len(in_batch) == 2

    # One more with attributes.
    gamma = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("gamma.txt", GAMMA), attributes={"lang": "en", "year": 2024}
    )
    assert (gamma.status, gamma.last_error, gamma.vector_store_id) == ("completed", None, store.id)
    assert gamma.attributes == {"lang": "en", "year": 2024}
    assert gamma.usage_bytes == len(GAMMA)

    files = client.vector_stores.files.list(store.id).data
    assert len(files) == 3 and all(f.status == "completed" for f in files)
    by_name = {client.files.retrieve(f.id).filename: f.id for f in files}
    assert set(by_name) == {"alpha.md", "beta.md", "gamma.txt"}
    assert client.files.content(by_name["alpha.md"]).content == ALPHA

    listed = client.vector_stores.list(limit=100).data
    assert store.id in [s.id for s in listed]
    again = client.vector_stores.retrieve(store.id)
    assert (again.file_counts.completed, again.file_counts.total) == (3, 3)
    assert again.usage_bytes == len(ALPHA) + len(BETA) + len(GAMMA)

    # The right file first, with its name and its text.
    hits = bm25(client, store.id, "zebra migration")
    assert hits, "no result"
    assert (hits[0].file_id, hits[0].filename) == (by_name["alpha.md"], "alpha.md")
    assert "zebra" in hits[0].content[0].text and hits[0].content[0].type == "text"
    assert bm25(client, store.id, "calibration voyage")[0].file_id == by_name["beta.md"]

    # The default (hybrid) search answers in the same shape.
    page = client.vector_stores.search(store.id, query="zebra", max_num_results=5)
    assert page.data and all(h.filename in by_name for h in page.data)

    # Filters on attributes: only gamma has lang=en; an `and` of two conditions; a value nothing has.
    only_en = client.vector_stores.search(
        store.id, query="lighthouse zebra calibration", filters={"type": "eq", "key": "lang", "value": "en"}
    ).data
    assert [h.file_id for h in only_en] == [gamma.id]
    assert only_en[0].attributes == {"lang": "en", "year": 2024}
    both = bm25(client, store.id, "lighthouse", filters={"type": "and", "filters": [
        {"type": "eq", "key": "lang", "value": "en"}, {"type": "eq", "key": "year", "value": 2024}]})
    assert [h.file_id for h in both] == [gamma.id]
    assert bm25(client, store.id, "lighthouse", filters={"type": "eq", "key": "lang", "value": "fr"}) == []

    # New attributes are what filters see from then on.
    updated = client.vector_stores.files.update(gamma.id, vector_store_id=store.id, attributes={"lang": "fr"})
    assert updated.attributes == {"lang": "fr"}
    fr = bm25(client, store.id, "lighthouse", filters={"type": "eq", "key": "lang", "value": "fr"})
    assert [h.file_id for h in fr] == [gamma.id]

    # A file removed from the store is no longer found; the uploaded file stays.
    deleted = client.vector_stores.files.delete(by_name["alpha.md"], vector_store_id=store.id)
    assert deleted.deleted
    assert all(h.file_id != by_name["alpha.md"] for h in bm25(client, store.id, "zebra migration"))
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.retrieve(by_name["alpha.md"], vector_store_id=store.id)
    assert client.files.retrieve(by_name["alpha.md"]).bytes == len(ALPHA)
    assert client.vector_stores.retrieve(store.id).file_counts.total == 2

    modified = client.vector_stores.update(store.id, name="renamed")
    assert modified.name == "renamed" and modified.metadata == {"team": "search"}

    # Deleting the store: gone; its files stay until deleted themselves.
    assert client.vector_stores.delete(store.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(store.id)
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.search(store.id, query="zebra")
    for file_id in by_name.values():
        assert client.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(by_name["beta.md"])


def test_a_store_made_with_file_ids_and_listed_page_by_page(client):
    uploaded = [client.files.create(file=(f"doc{i}.md", f"# Doc {i}\n\nword{i} here\n".encode()),
                                    purpose="assistants") for i in range(3)]
    store = client.vector_stores.create(name="paged", file_ids=[f.id for f in uploaded])
    assert store.file_counts.completed == 3
    first = client.vector_stores.files.list(store.id, limit=2)
    assert len(first.data) == 2 and first.has_more
    # The SDK's auto-pagination follows `after`.
    assert sorted(f.id for f in client.vector_stores.files.list(store.id, limit=2)) == sorted(f.id for f in uploaded)
    assert [f.id for f in client.vector_stores.files.list(store.id, order="asc").data] == [f.id for f in uploaded]
    client.vector_stores.delete(store.id)
    for f in uploaded:
        client.files.delete(f.id)


def test_a_file_keel_cannot_read_fails_with_its_reason(client):
    store = client.vector_stores.create(name="binary")
    vs_file = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("blob.bin", b"\x00\xff\xfe binary")
    )
    assert vs_file.status == "failed"
    assert vs_file.last_error is not None and vs_file.last_error.code == "invalid_file"
    assert client.vector_stores.retrieve(store.id).file_counts.failed == 1
    client.vector_stores.delete(store.id)
    client.files.delete(vs_file.id)


def pdf(pages: list[list[str]], title: str = "") -> bytes:
    """A PDF as a word processor writes one: each page's lines placed with `Td`, Helvetica (WinAnsiEncoding),
    the objects' offsets in a cross-reference table. Written by hand: the test clients' packages have no PDF
    writer, and this is the whole format keel needs to read here."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]  # the page tree (2) is filled in below
    font = 3
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    kids = []
    for lines in pages:
        ops = [b"BT /F1 12 Tf 72 720 Td"]
        for i, line in enumerate(lines):
            text = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")
            ops.append((b"0 -30 Td " if i else b"") + b"(" + text + b") Tj")
        ops.append(b"ET")
        stream = b"\n".join(ops)
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        content = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (content, font)
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [" + b" ".join(kids) + b"] /Count %d >>" % len(kids)
    info = None
    if title:
        objects.append(b"<< /Title (" + title.encode("latin-1") + b") >>")
        info = len(objects)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    trailer = b"<< /Size %d /Root 1 0 R" % (len(objects) + 1) + (b" /Info %d 0 R" % info if info else b"") + b" >>"
    out += b"trailer\n" + trailer + b"\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def test_a_pdf_is_read_by_pages_and_paragraphs(client):
    manual = pdf(
        [
            ["Harbour regulations", "Every vessel moored in the inner basin must display an anchor light."],
            ["Fees", "Mooring fees are charged per night and paid to the harbourmaster."],
        ],
        title="Harbour manual",
    )
    store = client.vector_stores.create(name="pdfs")
    vs_file = client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=("manual.pdf", manual))
    assert (vs_file.status, vs_file.last_error) == ("completed", None)

    # The text as keel extracted it: lines kept apart, pages as paragraphs, in order.
    content = client.vector_stores.files.content(vs_file.id, vector_store_id=store.id)
    text = "".join(part.text for part in content)
    assert text == (
        "Harbour regulations\n\nEvery vessel moored in the inner basin must display an anchor light.\n\n"
        "Fees\n\nMooring fees are charged per night and paid to the harbourmaster."
    )
    hits = bm25(client, store.id, "harbourmaster mooring fees")
    assert hits and hits[0].filename == "manual.pdf" and "harbourmaster" in hits[0].content[0].text

    # A truncated PDF fails with its reason; the store keeps what it had.
    broken = client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=("cut.pdf", manual[:200]))
    assert broken.status == "failed"
    assert broken.last_error is not None and broken.last_error.code == "invalid_file"
    assert "pdf" in broken.last_error.message.lower()
    assert bm25(client, store.id, "anchor light")[0].file_id == vs_file.id
    client.vector_stores.delete(store.id)
    for f in (vs_file, broken):
        client.files.delete(f.id)


def test_unknown_ids_are_not_found_and_bad_requests_say_why(client):
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve("vs_doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve("../../etc/passwd")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-doesnotexist")
    store = client.vector_stores.create(name="errors")
    try:
        with pytest.raises(openai.NotFoundError):
            client.vector_stores.files.create(store.id, file_id="file-doesnotexist")
        with pytest.raises(openai.BadRequestError) as e:
            client.vector_stores.search(store.id, query="x", filters={"type": "gt", "key": "year", "value": 2020})
        assert "`gt` is not supported" in e.value.message
        with pytest.raises(openai.BadRequestError):
            client.vector_stores.search(store.id, query="x", max_num_results=51)
        with pytest.raises(openai.BadRequestError):
            client.vector_stores.create(name="x", expires_after={"anchor": "last_active_at", "days": 1})
        # An empty store finds nothing rather than failing.
        assert client.vector_stores.search(store.id, query="anything").data == []
    finally:
        client.vector_stores.delete(store.id)


def test_uploads_are_checked_before_they_are_kept(rag_keel, mock):
    with httpx.Client(base_url=rag_keel.url, timeout=60) as http:
        r = http.post("/v1/files", files={"file": ("a.md", b"# A")})
        assert (r.status_code, r.json()["error"]["param"]) == (400, "purpose")
        r = http.post("/v1/files", files={"purpose": (None, "assistants")})
        assert (r.status_code, r.json()["error"]["param"]) == (400, "file")
        r = http.post("/v1/files", json={"purpose": "assistants"})
        assert r.status_code == 400 and "multipart" in r.json()["error"]["message"]
        too_big = b"x" * (64 * 1024 * 1024 + 1)
        r = http.post("/v1/files", data={"purpose": "assistants"}, files={"file": ("big.txt", too_big)})
        assert r.status_code == 413, r.text
        assert r.json()["error"]["type"] == "request_too_large"
        listed = http.get("/v1/files").json()
        assert listed["object"] == "list"
        assert all(f["filename"] not in ("a.md", "big.txt") for f in listed["data"])
