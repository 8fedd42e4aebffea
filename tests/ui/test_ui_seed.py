"""The data the dashboard tests read, checked through keel's admin API (not the dashboard): when these fail, the
fixture is at fault, not the dashboard."""

from __future__ import annotations

import subprocess

import keel_ui
from keel_ui import CLAUDE, GPT, MARKER, SUITE, UNKNOWN_MODEL


def test_the_log_holds_the_seeded_requests_with_distinct_models_and_statuses(keel, seeded):
    # The `seeded` fixture checked that the log held exactly the seeded rows then; other tests add rows later.
    assert seeded.requests == 28  # 20 chat requests + 2 evaluation runs of 4 cases
    assert len(keel.log_rows()) >= seeded.requests
    rows = keel.log_rows(key=seeded.key_id)
    assert len(rows) == 20
    assert {r["model_requested"] for r in rows} == {GPT, CLAUDE, UNKNOWN_MODEL}
    assert {r["status"] for r in rows} == {200, 400, 404, 429, 502}
    assert sum(r["status"] != 200 for r in rows) == 5
    marker = keel.log_rows(id=seeded.marker_id)
    assert len(marker) == 1 and MARKER in marker[0]["request_body"]


def test_two_evaluation_runs_are_stored_in_the_served_store(keel, seeded):
    assert len(seeded.runs) == 2 and seeded.runs[0] != seeded.runs[1]
    out = subprocess.run([str(keel_ui.binary("KEEL_BIN", "keel")), "eval", "compare", *seeded.runs,
                          "--config", str(keel.config)], env=keel_ui.keel_env(), capture_output=True, text=True,
                         timeout=60)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "regressed 1 · improved 0" in text, text
    runs = subprocess.run([str(keel_ui.binary("KEEL_BIN", "keel")), "eval", "runs", SUITE, "--config",
                           str(keel.config)], env=keel_ui.keel_env(), capture_output=True, text=True, timeout=60)
    assert all(r in runs.stdout for r in seeded.runs), runs.stdout + runs.stderr
