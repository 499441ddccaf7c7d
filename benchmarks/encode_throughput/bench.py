"""Passages per second of our ``DenseEncoder`` against ``SentenceTransformer.encode``, same model, same passages.

    python benchmarks/encode_throughput/bench.py --model runs/retriever --passages 10000

Both encoders load one saved retriever folder (HF + sentence-transformers files; without --model a
4-layer hidden-256 BERT over the demo tokenizer is written first). Passages are the demo candidate
pool and corpus, cycled to ``--passages``. One process, timings after a warm-up batch, the encoders
interleaved over five slices; prints a JSON
record and a markdown row (ratios are ours over sentence-transformers).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]


def demo_passages(n: int) -> list[str]:
    texts = []
    for name in ("retrieval/candidates.jsonl", "corpus.jsonl"):
        texts += [json.loads(line)["text"] for line in (REPO / "data" / "demo" / name).read_text(encoding="utf-8").splitlines()]
    return [texts[i % len(texts)] for i in range(n)]


def scratch_model(folder: Path, layers: int = 4, hidden: int = 256) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from finbert2.retrieve import save_sentence_transformer

    tokenizer = AutoTokenizer.from_pretrained(REPO / "data" / "demo" / "tokenizer")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                        pad_token_id=tokenizer.pad_token_id)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_sentence_transformer(folder, max_seq_length=256)
    return folder


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="A retriever folder (HF + sentence-transformers); default: a scratch tiny BERT.")
    parser.add_argument("--passages", type=int, default=10000)
    parser.add_argument("--layers", type=int, default=4, help="Scratch model depth (12 with --hidden 768: BERT-base).")
    parser.add_argument("--hidden", type=int, default=256, help="Scratch model width.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--no_bf16", action="store_true", help="Skip the bf16 run (slow on CPUs without bf16 units).")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from finbert2.retrieve import DenseEncoder

    folder = Path(args.model) if args.model else scratch_model(Path(tempfile.mkdtemp()) / "model", args.layers, args.hidden)
    passages = demo_passages(args.passages)
    st = SentenceTransformer(str(folder), device="cpu")
    st.max_seq_length = args.max_length
    ours = DenseEncoder.from_pretrained(str(folder), max_length=args.max_length, batch_size=args.batch_size)
    ours_bf16 = DenseEncoder.from_pretrained(str(folder), max_length=args.max_length, batch_size=args.batch_size,
                                             bf16=True)
    warm = passages[: args.batch_size]
    st.encode(warm, batch_size=args.batch_size)
    ours.encode(warm)
    if not args.no_bf16:
        ours_bf16.encode(warm)

    # Interleave the encoders slice by slice, so load from other processes hits both alike.
    rounds = 5
    size = -(-len(passages) // rounds)
    st_parts, fp32_parts, bf16_parts = [], [], []
    st_s = fp32_s = bf16_s = 0.0
    for start in range(0, len(passages), size):
        part = passages[start:start + size]
        vec, sec = timed(lambda: st.encode(part, batch_size=args.batch_size, convert_to_numpy=True))
        st_parts.append(vec)
        st_s += sec
        vec, sec = timed(lambda: ours.encode(part))
        fp32_parts.append(vec)
        fp32_s += sec
        if not args.no_bf16:
            vec, sec = timed(lambda: ours_bf16.encode(part))
            bf16_parts.append(vec)
            bf16_s += sec
    st_vec, fp32_vec = np.concatenate(st_parts), np.concatenate(fp32_parts)
    bf16_vec = fp32_vec if args.no_bf16 else np.concatenate(bf16_parts)
    bf16_s = float("nan") if args.no_bf16 else bf16_s

    def min_cos(a, b):
        return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())

    record = {
        "passages": len(passages), "batch_size": args.batch_size, "max_length": args.max_length,
        "model": str(args.model or f"scratch {args.layers}-layer hidden-{args.hidden} BERT, demo tokenizer"),
        "st_passages_per_s": len(passages) / st_s, "ours_fp32_passages_per_s": len(passages) / fp32_s,
        "ours_bf16_passages_per_s": len(passages) / bf16_s,
        "ratio_fp32": st_s / fp32_s, "ratio_bf16": st_s / bf16_s,
        "min_cosine_fp32": min_cos(fp32_vec, st_vec), "min_cosine_bf16": min_cos(bf16_vec, st_vec),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(record, indent=2))
    print(f"| {record['passages']} | {record['st_passages_per_s']:.1f} | {record['ours_fp32_passages_per_s']:.1f} "
          f"({record['ratio_fp32']:.2f}x, cos {record['min_cosine_fp32']:.6f}) | "
          f"{record['ours_bf16_passages_per_s']:.1f} ({record['ratio_bf16']:.2f}x, cos {record['min_cosine_bf16']:.4f}) |")


if __name__ == "__main__":
    main()
