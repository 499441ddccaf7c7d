"""Passages per second of our ``DenseEncoder`` against ``SentenceTransformer.encode``, same model, same passages.

    python benchmarks/encode_throughput/bench.py --size e5-small  --passages 10000
    python benchmarks/encode_throughput/bench.py --size bert-base --passages 3000

Both encoders load one model folder (HF + sentence-transformers files): ``--size e5-small`` is
multilingual-e5-small as the toolkit converts it (mean pooling, ``passage: `` prompt), ``bert-base``
a seeded random 12 x 768 BERT over the 21,128-token bert-base-chinese vocab (CLS pooling, the
FinBERT2 layout), ``tiny`` a 2 x 64 one for smoke tests; ``--model`` takes any retriever folder.
Passages are the demo candidate pool and corpus, cycled to ``--passages``, with the folder's
passage prompt on both sides. Same batch size (``--peer_batch_size`` changes the peer's; ours also
caps a forward pass at 2048 padded tokens on CPU, ``--max_batch_tokens``) and max length on both sides, one process, timings
after a warm-up batch, the encoders interleaved over five slices. Precisions: fp32, and bf16 where
the CPU has native bf16 (ours ``bf16=True``, i.e. bf16 autocast; sentence-transformers called under
``torch.autocast("cpu", dtype=torch.bfloat16)``: the same autocast, weights kept fp32). Prints the
machine header, a JSON record and markdown rows (ratios are ours over sentence-transformers).

``--profile N`` then bounds what any encoder of the same model can gain over sentence-transformers:
it profiles ``SentenceTransformer.encode`` on N passages (``torch.profiler``, fp32), takes the share of
its CPU time in matrix products (linear layers and attention) and the share of real tokens in its
length-sorted, padded batches, and reports the ceiling ``1 / (matmul share x real-token share)``: the
speed-up of an encoder that spent no time outside the matmuls and computed no padding at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common


def min_cos(a, b) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::matmul",
              "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math")


def real_token_share(st, texts: list[str], batch_size: int) -> float:
    """Real tokens over padded tokens in sentence-transformers' batches (it sorts by character length)."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    lengths = [len(ids) for ids in st.tokenizer([texts[i] for i in order], truncation=True,
                                                max_length=st.max_seq_length)["input_ids"]]
    padded = sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size])
                 for i in range(0, len(lengths), batch_size))
    return sum(lengths) / padded


def speedup_ceiling(st, texts: list[str], batch_size: int, prompt: str) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        st.encode(texts, batch_size=batch_size, prompt=prompt, convert_to_numpy=True)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    real = real_token_share(st, [prompt + t for t in texts], batch_size)
    result = {"passages": len(texts), "matmul_share": matmul / total, "real_token_share": real,
              "ceiling": 1.0 / (matmul / total * real),
              "top_ops": [[e.key, round(e.self_cpu_time_total / total, 4)] for e in top]}
    print("speed-up ceiling over sentence-transformers:", result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser)
    parser.add_argument("--model", help="Any retriever folder (HF + sentence-transformers); overrides --size.")
    parser.add_argument("--passages", type=int, default=10000)
    parser.add_argument("--batch_size", type=int, default=64, help="both sides (ours: at most, see below)")
    parser.add_argument("--max_batch_tokens", type=int, default=None,
                        help="ours: padded tokens per forward pass (default: the CPU default, 2048; 0: no bound)")
    parser.add_argument("--peer_batch_size", type=int, default=None,
                        help="sentence-transformers' batch size, when not --batch_size")
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="slices the passages are cut into, encoders interleaved")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile sentence-transformers on N passages and report the speed-up ceiling")
    args = parser.parse_args()

    info = common.print_header()
    from sentence_transformers import SentenceTransformer

    from finbert2.retrieve import DenseEncoder

    work = common.work_dir("encbench_")
    folder = Path(args.model) if args.model else common.model_folder(args.size, work, "encoder",
                                                                      max_seq_length=args.max_length)
    passages = common.demo_passages(args.passages)
    st = SentenceTransformer(str(folder), device="cpu")
    st.max_seq_length = args.max_length
    ours = DenseEncoder.from_pretrained(str(folder), max_length=args.max_length, batch_size=args.batch_size,
                                        device="cpu", max_batch_tokens=args.max_batch_tokens)
    peer_batch_size = args.peer_batch_size or args.batch_size
    prompt = ours.passage_instruction  # the folder's document prompt ("passage: " for e5), both sides

    def st_encode(texts, precision):
        with common.autocast(precision):
            return st.encode(texts, batch_size=peer_batch_size, prompt=prompt, convert_to_numpy=True)

    def ours_encode(texts, precision):
        ours.bf16 = precision == "bf16"
        return ours.encode_passages(texts)

    rows, reference = [], None
    for precision in common.precisions(args.bf16):
        warm = passages[: args.batch_size]
        st_encode(warm, precision)
        ours_encode(warm, precision)
        size = -(-len(passages) // args.rounds)
        st_parts, our_parts, st_s, our_s = [], [], 0.0, 0.0
        for start in range(0, len(passages), size):  # interleaved, so outside load hits both alike
            part = passages[start:start + size]
            sec, vec = common.timed(lambda t=part, p=precision: st_encode(t, p))
            st_parts.append(vec)
            st_s += sec
            sec, vec = common.timed(lambda t=part, p=precision: ours_encode(t, p))
            our_parts.append(vec)
            our_s += sec
        st_vec, our_vec = np.concatenate(st_parts), np.concatenate(our_parts)
        reference = st_vec if reference is None else reference
        rows.append({
            "precision": precision,
            "st_passages_per_s": len(passages) / st_s, "ours_passages_per_s": len(passages) / our_s,
            "ratio": st_s / our_s,
            "min_cosine_ours_to_st_same_precision": min_cos(our_vec, st_vec),
            "min_cosine_ours_to_st_fp32": min_cos(our_vec, reference),
        })
        print(rows[-1], flush=True)

    ceiling = speedup_ceiling(st, passages[: args.profile], peer_batch_size, prompt) if args.profile else None
    model = str(args.model) if args.model else common.size_description(args.size)
    record = {"benchmark": "encode_throughput", "machine": info, "size": args.model or args.size, "model": model,
              "passages": len(passages), "batch_size": args.batch_size, "max_length": args.max_length,
              "ours_max_batch_tokens": ours.max_batch_tokens, "peer_batch_size": peer_batch_size,
              "passage_prompt": prompt, "pooling": ours.pooling,
              "peer_bf16": "sentence-transformers under torch.autocast('cpu', dtype=torch.bfloat16), fp32 weights",
              "rows": rows, "speedup_ceiling": ceiling}
    common.write_record(args.output, record)
    print("\n| size | precision | passages | sentence-transformers (passages/s) | ours (passages/s) | ratio | "
          "min cosine to ST (same precision / ST fp32) |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {record['size']} | {r['precision']} | {len(passages)} | {r['st_passages_per_s']:.1f} | "
              f"{r['ours_passages_per_s']:.1f} | **{r['ratio']:.2f}x** | "
              f"{r['min_cosine_ours_to_st_same_precision']:.6f} / {r['min_cosine_ours_to_st_fp32']:.6f} |")


if __name__ == "__main__":
    main()
