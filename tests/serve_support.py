"""Tiny model folders and a real server process for the ``finbert2 serve`` tests.

The models are randomly initialised (hidden 64, 2 layers) over the demo tokenizer: the server's
answers are checked against the same folders loaded and called directly, so no training is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]

NEWS = [
    "央行宣布下调存款准备金率0.5个百分点，释放长期资金约一万亿元。",
    "贵州茅台发布年报，净利润同比增长百分之十九，拟每股派发现金红利。",
    "美联储加息二十五个基点，科技股普遍下跌，纳斯达克指数收跌百分之二。",
    "光伏行业产能过剩，多家企业下调组件报价，行业利润承压。",
    "证监会发布新规，加强对上市公司信息披露违规行为的监管。",
    "新能源汽车销量创新高，比亚迪月销量突破三十万辆。",
]


def tiny_config(tokenizer, **extra):
    from transformers import BertConfig

    settings = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=128, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    return BertConfig(**{**settings, **extra})


def make_retriever(tokenizer_dir: Path, out: Path, prompts: dict[str, str] | None = None, layers: int = 2) -> Path:
    """A plain BERT encoder folder; with ``prompts``, a sentence-transformers folder (mean pooling) too."""
    import torch
    from transformers import AutoTokenizer, BertModel

    from finbert2.retrieve.encoder import save_sentence_transformer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(1)
    BertModel(tiny_config(tokenizer, num_hidden_layers=layers), add_pooling_layer=False).save_pretrained(out)
    tokenizer.save_pretrained(out)
    if prompts is not None:
        save_sentence_transformer(out, prompts=prompts, max_seq_length=512, pooling="mean")
    return out


def make_classifier(tokenizer_dir: Path, out: Path, labels: list[str], multi_label: bool = False,
                    threshold: float = 0.5, long_text: dict | None = None, seed: int = 2) -> Path:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from finbert2.classify.inference import CONFIG_KEY

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    extra = {"problem_type": "multi_label_classification"} if multi_label else {}
    config = tiny_config(tokenizer, num_labels=len(labels), id2label=dict(enumerate(labels)),
                         label2id={name: i for i, name in enumerate(labels)}, **extra)
    setattr(config, CONFIG_KEY, {"threshold": threshold, "long_text": long_text or {"max_length": 128}})
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_reranker(tokenizer_dir: Path, out: Path, seed: int = 3) -> Path:
    """A one-logit cross-encoder folder (what ``finbert2 rerank train`` writes)."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    BertForSequenceClassification(tiny_config(tokenizer, num_labels=1)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m finbert2 serve ...`` on a free loopback port, waited for until /ready."""

    def __init__(self, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")])),
                    **(env or {})}
        self.log = open(os.devnull, "w") if not os.environ.get("FINBERT2_SERVE_TEST_LOG") else sys.stderr
        self.process = subprocess.Popen(
            [sys.executable, "-m", "finbert2", "serve", *map(str, args), "--port", str(self.port)],
            cwd=REPO_ROOT, env=full_env, stdout=self.log, stderr=self.log)

    def wait_ready(self, timeout: float = 300) -> ServerProcess:
        """Wait until /ready answers 200; on a failure the caller stops the process (``__enter__`` does)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode} before it was ready")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server not ready in time")

    def stop(self) -> int:
        if self.log is not sys.stderr:
            self.log.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()  # never leave a server behind a failed start
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def write_corpus(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
