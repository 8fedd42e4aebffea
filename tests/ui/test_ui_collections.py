"""Collections: the list with each collection's size, one collection's documents, a search whose results show
where BM25 and vector search each ranked every chunk (checked against keel's own `POST /v1/search`), a result
opened on its document's page, and a bad search refused on the page.

The collection holds six Node.js API documents from ../shared/data/rag-docs-nodejs-18-api, ingested in the
session's setup with keel's local MiniLM (conftest `_seed_collection`)."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from keel_ui import COLLECTION, COLLECTION_FILES, column, httpx, number

QUERY = "install the package manager version a project asks for"


def api_search(keel, key: str, query: str, mode: str, k: int) -> list[dict]:
    resp = httpx.post(f"{keel.url}/v1/search", timeout=60, headers={"authorization": f"Bearer {key}"},
                      json={"collection": COLLECTION, "query": query, "mode": mode, "k": k})
    assert resp.status_code == 200, f"POST /v1/search: {resp.status_code} {resp.text}"
    return resp.json()["data"]


def rank_text(rank: int | None) -> str:
    return "—" if rank is None else str(rank)


def test_collections_list_their_documents_and_sizes(ui, signed_in, seeded, keel):
    page = signed_in
    stats = seeded.collection["collection_stats"]
    ui.open(page, "/ui")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Collections").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Collections")
    row = page.get_by_role("table", name="Collections").locator(f"tbody tr[data-collection='{COLLECTION}']")
    expect(row).to_have_count(1)
    assert number(row.locator("[data-col='documents']").inner_text()) == len(COLLECTION_FILES) == stats["sources"]
    assert number(row.locator("[data-col='chunks']").inner_text()) == stats["chunks"]
    ui.shot(page, "collections")

    row.get_by_role("link", name=COLLECTION).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(COLLECTION)
    docs = page.get_by_role("table", name="Documents")
    sources = column(docs, "Source")
    assert sorted(s.rsplit("/", 1)[-1] for s in sources) == sorted(COLLECTION_FILES), sources
    # Each document's chunks add up to the collection's.
    assert sum(number(c) for c in column(docs, "Chunks")) == stats["chunks"]

    # The source filter narrows the list.
    page.get_by_label("Source contains").fill("corepack")
    page.get_by_role("button", name="Show").click()
    expect(docs.locator("tbody tr")).to_have_count(1)
    expect(docs).to_contain_text("corepack.md")


def test_a_search_shows_each_retrievers_ranks(ui, signed_in, seeded, keel):
    page = signed_in
    ui.open(page, f"/ui/collections/{COLLECTION}")
    page.get_by_label("Query").fill(QUERY)
    page.get_by_label("Retriever").select_option("hybrid")
    page.get_by_label("Results").fill("8")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"[?&]q="))
    results = page.get_by_role("table", name="Results")
    expect(results.locator("tbody tr")).to_have_count(8)

    # The page shows what the API answers for the same query: the same chunks in the same order, and each
    # retriever's own rank of every one.
    want = api_search(keel, seeded.eval_key, QUERY, "hybrid", 8)
    rows = results.locator("tbody tr")
    got = [rows.nth(i).get_attribute("data-chunk") for i in range(rows.count())]
    assert got == [str(h["id"]) for h in want], (got, [h["id"] for h in want])
    assert column(results, "BM25 rank") == [rank_text(h["bm25_rank"]) for h in want]
    assert column(results, "Vector rank") == [rank_text(h["vector_rank"]) for h in want]
    # A hybrid search's results came from both retrievers (the question names no word of corepack.md's title
    # but is what the document is about: the vector side must find it).
    assert any(h["vector_rank"] for h in want) and any(h["bm25_rank"] for h in want), want
    assert any("corepack" in h["source"] for h in want[:3]), [h["source"] for h in want]
    ui.shot(page, "collection-search")

    # BM25 alone: no vector ranks, and its own order.
    page.get_by_label("Retriever").select_option("bm25")
    page.get_by_role("button", name="Search").click()
    want = api_search(keel, seeded.eval_key, QUERY, "bm25", 8)
    expect(results.locator("tbody tr")).to_have_count(len(want))
    assert set(column(results, "Vector rank")) == {"—"}
    assert column(results, "BM25 rank") == [str(i + 1) for i in range(len(want))]

    # A result opens its document on the page that holds the chunk, scrolled to it.
    first = results.locator("tbody tr").first
    chunk_id = first.get_attribute("data-chunk")
    first.get_by_role("link").first.click()
    expect(page).to_have_url(re.compile(rf"/ui/collections/{COLLECTION}/document\?.*#chunk-{chunk_id}$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Document")
    chunk = page.locator(f"section[data-chunk='{chunk_id}']")
    expect(chunk).to_be_visible()
    expect(chunk.locator("pre")).not_to_be_empty()
    ui.shot(page, "collection-document")


def test_a_bad_search_is_refused_on_the_page(ui, signed_in, seeded):
    page = signed_in
    ui.open(page, f"/ui/collections/{COLLECTION}?q=corepack&k=500", status=400)
    expect(page.get_by_role("alert")).to_contain_text("from 1 to 100")
    expect(page.get_by_role("table", name="Results")).to_have_count(0)
    expect(page.get_by_role("table", name="Documents")).to_be_visible()  # the page is still the collection's
    ui.open(page, f"/ui/collections/{COLLECTION}?q=corepack&filter=no-equals-sign", status=400)
    expect(page.get_by_role("alert")).to_contain_text("key=value")
    ui.open(page, "/ui/collections/no-such-collection", status=404)
    ui.open(page, f"/ui/collections/{COLLECTION}/document?source=no-such-file.md", status=404)
