"""The vocabulary loss alone: ``finbert2.losses.linear_cross_entropy`` against autograd's
``F.cross_entropy(F.linear(h, W, b).float(), t)`` (the path the MLM and RetroMAE heads took before).

    python benchmarks/retromae_vs_mlm/loss_bench.py --output benchmarks/retromae_vs_mlm/loss-avx512bf16.json

Forward + backward of the projection and the loss at the shapes of a training step (e5-small as
converted: hidden 384, 111,537 pieces; rows: the MLM head's masked positions of a 16 x 256 batch,
~15%, and RetroMAE's decoder, every token), fp32 and bf16 autocast where native; median of
``--repeats`` after one warm-up, both paths interleaved; the loss and gradient differences of the
two paths are recorded beside the times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common
import torch
import torch.nn.functional as F

from finbert2.losses import BLOCK_BYTES, linear_cross_entropy


def autograd_path(h, w, b, t):
    return F.cross_entropy(F.linear(h, w, b).float(), t)


def fused_path(block_bytes: int):
    return lambda h, w, b, t: linear_cross_entropy(h, w, b, t, block_bytes=block_bytes)


def step(path, h, w, b, t, precision):
    for x in (h, w, b):
        x.grad = None
    started = time.perf_counter()
    with common.autocast(precision):
        loss = path(h, w, b, t)
    loss.backward()
    return time.perf_counter() - started, loss.detach(), [x.grad.clone() for x in (h, w, b)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--vocab", type=int, default=111_537)
    parser.add_argument("--rows", type=int, nargs="+", default=[614, 3800],
                        help="positions scored: MLM's 15%% and RetroMAE's decoder of a 16 x 256 batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block_bytes", type=int, nargs="+", default=[BLOCK_BYTES],
                        help="fused: float32 logits per row block (several: a sweep; the first is the default's row)")
    opts = parser.parse_args()
    info = common.print_header()
    generator = torch.Generator().manual_seed(0)
    w = (torch.randn(opts.vocab, opts.hidden, generator=generator) * 0.02).requires_grad_()
    b = torch.zeros(opts.vocab, requires_grad=True)
    rows_out = []
    for precision in common.precisions(opts.bf16):
        for rows in opts.rows:
            h = torch.randn(rows, opts.hidden, generator=generator).requires_grad_()
            t = torch.randint(0, opts.vocab, (rows,), generator=generator)
            paths = [("autograd", autograd_path)] + [(f"fused {n}", fused_path(n)) for n in opts.block_bytes]
            times = {name: [] for name, _ in paths}
            for repeat in range(opts.repeats + 1):
                results = {name: step(path, h, w, b, t, precision) for name, path in paths}
                if repeat:
                    for name, (seconds, _, _) in results.items():
                        times[name].append(seconds)
            fused = f"fused {opts.block_bytes[0]}"
            (_, loss_a, grads_a), (_, loss_f, grads_f) = results["autograd"], results[fused]
            row = {"precision": precision, "rows": rows, "vocab": opts.vocab, "hidden": opts.hidden,
                   "block_bytes": opts.block_bytes[0], "autograd_ms": 1000 * statistics.median(times["autograd"]),
                   "fused_ms": 1000 * statistics.median(times[fused]),
                   "fused_ms_by_block_bytes": {n: 1000 * statistics.median(times[f"fused {n}"])
                                               for n in opts.block_bytes},
                   "loss_difference": abs(float(loss_a - loss_f)),
                   "gradient_cosine_min": min(float(F.cosine_similarity(ga.flatten().double(), gf.flatten().double(), dim=0))
                                              for ga, gf in zip(grads_a, grads_f))}
            row["speedup"] = row["autograd_ms"] / row["fused_ms"]
            print(row, flush=True)
            rows_out.append(row)
    common.write_record(opts.output, {"benchmark": "vocabulary_loss", "machine": info, "rows": rows_out})
    print("\n| precision | rows x vocab | autograd ms | fused ms | speed-up | loss difference | min gradient cosine |\n"
          "|---|---|---:|---:|---:|---:|---:|")
    for r in rows_out:
        print(f"| {r['precision']} | {r['rows']} x {r['vocab']:,} | {r['autograd_ms']:.0f} | {r['fused_ms']:.0f} | "
              f"**{r['speedup']:.2f}x** | {r['loss_difference']:.1e} | {r['gradient_cosine_min']:.6f} |")


if __name__ == "__main__":
    main()
