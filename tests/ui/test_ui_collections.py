"""Collections: the list with each collection's size, one collection's documents, a search whose results show
where BM25 and vector search each ranked every chunk (checked against keel's own `POST /v1/search`), a result
opened on its document's page, a long document paged, and bad input refused on the page.

The collection holds seven Node.js API documents from ../shared/data/rag-docs-nodejs-18-api, ingested in the
session's setup with keel's local MiniLM (conftest `collection`)."""

from __future__ import annotations

import re
from urllib.parse import quote

from playwright.sync_api import expect

from keel_ui import COLLECTION, COLLECTION_FILES, LONG_DOCUMENT, column, httpx, number

QUERY = "install the package manager version a project asks for"
PER_PAGE = 50  # chunks on a document's page (crates/server/src/ui/collections.rs)


def api_search(keel, key: str, query: str, mode: str, k: int) -> list[dict]:
    resp = httpx.post(f"{keel.url}/v1/search", timeout=60, headers={"authorization": f"Bearer {key}"},
                      json={"collection": COLLECTION, "query": query, "mode": mode, "k": k})
    assert resp.status_code == 200, f"POST /v1/search: {resp.status_code} {resp.text}"
    return resp.json()["data"]


def ranks(results, header: str) -> list[int | None]:
    """A rank column read as numbers; a cell without one ("—", read out as "not ranked") as None."""
    out = []
    for cell in column(results, header):
        assert cell.isdigit() or "not ranked" in cell, f"{header}: {cell!r} is neither a rank nor 'not ranked'"
        out.append(int(cell) if cell.isdigit() else None)
    return out


def shown_ids(results) -> list[str]:
    rows = results.locator("tbody tr")
    return [rows.nth(i).get_attribute("data-chunk") for i in range(rows.count())]


def search(page, query: str, mode: str, k: int) -> None:
    page.get_by_label("Query").fill(query)
    page.get_by_label("Retriever").select_option(mode)
    page.get_by_label("Results").fill(str(k))
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(rf"[?&]mode={mode}&k={k}\b"))
    page.wait_for_load_state("domcontentloaded")


def test_collections_list_their_documents_and_sizes(ui, signed_in, collection):
    page = signed_in
    stats = collection["collection_stats"]
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


def test_a_search_shows_each_retrievers_ranks(ui, signed_in, collection, keel, seeded):
    page = signed_in
    ui.open(page, f"/ui/collections/{COLLECTION}")
    search(page, QUERY, "hybrid", 8)
    results = page.get_by_role("table", name="Results")
    expect(results.locator("tbody tr")).to_have_count(8)

    # The page shows what the API answers for the same query: the same chunks in the same order, and each
    # retriever's own rank of every one.
    want = api_search(keel, seeded.eval_key, QUERY, "hybrid", 8)
    assert shown_ids(results) == [str(h["id"]) for h in want]
    assert ranks(results, "BM25 rank") == [h["bm25_rank"] for h in want]
    assert ranks(results, "Vector rank") == [h["vector_rank"] for h in want]
    # The question is what corepack.md is about: the fused list starts there.
    assert any("corepack" in h["source"] for h in want[:3]), [h["source"] for h in want]
    ui.shot(page, "collection-search")

    # One rare word: BM25 finds only the chunks that hold it, vector search ranks every chunk, so the fused list
    # goes on past BM25's with chunks it did not rank.
    search(page, "punycode", "hybrid", 30)
    want = api_search(keel, seeded.eval_key, "punycode", "hybrid", 30)
    expect(results.locator("tbody tr")).to_have_count(len(want))
    assert shown_ids(results) == [str(h["id"]) for h in want]
    bm25 = ranks(results, "BM25 rank")
    assert bm25 == [h["bm25_rank"] for h in want]
    assert None in bm25 and any(r is not None for r in bm25), bm25
    assert ranks(results, "Vector rank") == [h["vector_rank"] for h in want]

    # BM25 alone: its own order, and no vector column (that retriever did not run).
    search(page, QUERY, "bm25", 8)
    want = api_search(keel, seeded.eval_key, QUERY, "bm25", 8)
    expect(results.locator("tbody tr")).to_have_count(len(want))
    assert shown_ids(results) == [str(h["id"]) for h in want]
    headers = [h.strip() for h in results.locator("thead th").all_inner_texts()]
    assert "Vector rank" not in headers and "BM25 score" in headers, headers

    # A result opens its document on the page that holds the chunk, scrolled to it.
    first = results.locator("tbody tr").first
    chunk_id = first.get_attribute("data-chunk")
    first.get_by_role("link").first.click()
    expect(page).to_have_url(re.compile(rf"/ui/collections/{COLLECTION}/document\?.*#chunk-{chunk_id}$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Document")
    chunk = page.locator(f"article[data-chunk='{chunk_id}']")
    expect(chunk).to_be_in_viewport()
    expect(chunk.locator("pre")).not_to_be_empty()
    ui.shot(page, "collection-document")


def test_a_long_document_is_paged_and_a_chunk_link_opens_its_page(ui, signed_in, collection):
    page = signed_in
    ui.open(page, f"/ui/collections/{COLLECTION}?source={LONG_DOCUMENT}")
    docs = page.get_by_role("table", name="Documents")
    expect(docs.locator("tbody tr")).to_have_count(1)
    chunks = int(number(column(docs, "Chunks")[0]))
    assert chunks > PER_PAGE, f"{LONG_DOCUMENT} has {chunks} chunks: the pager needs more than {PER_PAGE}"
    pages = -(-chunks // PER_PAGE)
    docs.get_by_role("link").first.click()

    articles = page.locator("article.chunk")
    expect(articles).to_have_count(PER_PAGE)
    pager = page.get_by_role("navigation", name="Pages")
    expect(pager).to_contain_text(f"Page 1 of {pages}")
    first_id = int(articles.first.get_attribute("data-chunk"))
    pager.get_by_role("link", name="Next").click()
    expect(pager).to_contain_text(f"Page 2 of {pages}")
    expect(articles.first).to_have_attribute("data-chunk", str(first_id + PER_PAGE))

    # A link to a chunk on a later page opens that page at the chunk.
    source = page.url.split("source=", 1)[1].split("&", 1)[0]
    target = first_id + chunks - 1
    ui.open(page, f"/ui/collections/{COLLECTION}/document?source={source}&chunk={target}")
    expect(pager).to_contain_text(f"Page {pages} of {pages}")
    expect(page.locator(f"article[data-chunk='{target}']")).to_be_visible()
    expect(articles).to_have_count(chunks - (pages - 1) * PER_PAGE)

    # A chunk id the document does not hold (a link from before the document was ingested again) says so.
    ui.open(page, f"/ui/collections/{COLLECTION}/document?source={source}&chunk={first_id + chunks}")
    expect(page.get_by_role("alert")).to_contain_text("no chunk")
    expect(pager).to_contain_text(f"Page 1 of {pages}")


def test_bad_input_is_refused_on_the_page(ui, signed_in, collection):
    page = signed_in
    base = f"/ui/collections/{COLLECTION}"
    ui.open(page, f"{base}?q=corepack&k=500", status=400)
    expect(page.get_by_role("alert")).to_contain_text("from 1 to 100")
    expect(page.get_by_role("table", name="Results")).to_have_count(0)
    expect(page.get_by_role("table", name="Documents")).to_be_visible()  # the page is still the collection's
    ui.open(page, f"{base}?q=corepack&filter=no-equals-sign", status=400)
    expect(page.get_by_role("alert")).to_contain_text("key=value")
    ui.open(page, f"{base}?page=first", status=400)
    expect(page.get_by_role("alert")).to_contain_text("not a page number")
    ui.open(page, f"{base}/document", status=400)
    ui.open(page, f"{base}/document?source={quote('x.md')}&chunk=abc", status=400)
    ui.open(page, f"{base}/document?source=no-such-file.md", status=404)
    ui.open(page, "/ui/collections/no-such-collection", status=404)
