"""A run writes only into its output_dir (and the per-user cache): never into the working copy, the
input data, the temp folder or elsewhere in the home folder.

Every stage runs once, small, in one subprocess whose HOME and TMPDIR are fresh folders; every file
under the repository (inputs included), HOME and TMPDIR is compared before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

TINY_MODEL = ["--tiny_hidden_size", "64", "--tiny_num_hidden_layers", "1", "--tiny_num_attention_heads", "1",
              "--tiny_intermediate_size", "128"]
FEW_STEPS = ["--max_steps", "2", "--save_steps", "1", "--eval_steps", "1", "--logging_steps", "1",
             "--disable_tqdm", "True"]


def _stages(runs: Path) -> list[list[str]]:
    r = str(runs)
    return [
        ["tokenizer", "configs/tokenizer/tiny.yaml", "--max_added_words", "50", "--output_dir", f"{r}/tokenizer"],
        ["mlm", "configs/mlm/tiny.yaml", "--tokenizer_name", f"{r}/tokenizer", *TINY_MODEL, *FEW_STEPS,
         "--output_dir", f"{r}/mlm"],
        ["retromae", "configs/retromae/tiny.yaml", "--model_name_or_path", f"{r}/mlm", "--tokenizer_name",
         f"{r}/mlm", *FEW_STEPS, "--output_dir", f"{r}/retromae"],
        ["classify", "train", "configs/classify/tiny.yaml", "--model_name_or_path", f"{r}/retromae",
         "--tokenizer_name", f"{r}/retromae", *FEW_STEPS, "--output_dir", f"{r}/classify"],
        ["classify", "baseline", "configs/classify/tiny.yaml", "--output_dir", f"{r}/classify_baseline"],
        ["classify", "predict", "--model_name_or_path", f"{r}/classify", "--input_file",
         "data/demo/sentiment/test.jsonl", "--output_file", f"{r}/predictions.jsonl"],
        ["retrieve", "mine", "--model_name_or_path", f"{r}/retromae", "--input_file",
         "data/demo/retrieval/queries.jsonl", "--candidate_pool", "data/demo/retrieval/candidates.jsonl",
         "--negative_number", "2", "--output_dir", f"{r}/mine"],
        ["retrieve", "train", "configs/retriever/tiny.yaml", "--model_name_or_path", f"{r}/retromae",
         "--tokenizer_name", f"{r}/retromae", "--train_data", f"{r}/mine/train.jsonl", *FEW_STEPS,
         "--output_dir", f"{r}/retriever"],
        ["retrieve", "evaluate", "--eval_data", "data/demo/retrieval/eval", "--models", "bm25", f"{r}/retriever",
         "--output_dir", f"{r}/retriever_eval"],
        ["retrieve", "index", "--model_name_or_path", f"{r}/retriever", "--corpus",
         "data/demo/retrieval/eval/corpus.jsonl", "--output_dir", f"{r}/index"],
        ["topics", "configs/topics/tiny.yaml", "--embedding_backend", "tfidf", "--max_docs", "300",
         "--output_dir", f"{r}/topics"],
        ["report", r, "--output", f"{r}/report"],
    ]


def _snapshot(*roots: Path) -> dict[Path, tuple[int, int]]:
    files = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            for name in filenames:
                path = Path(dirpath) / name
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                files[path] = (stat.st_size, stat.st_mtime_ns)
    return files


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def test_every_stage_writes_only_into_its_output_dir(tmp_path):
    home, temp, runs = tmp_path / "home", tmp_path / "tmp", tmp_path / "runs"
    for folder in (home, temp):
        folder.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in {"XDG_CACHE_HOME", "FINBERT2_CACHE", "MPLCONFIGDIR", "HF_HOME", "HF_DATASETS_CACHE",
                        "TRANSFORMERS_CACHE", "TMP", "TEMP"}}
    # Bytecode caches are the interpreter's, not a run's, writes.
    env.update(HOME=str(home), TMPDIR=str(temp), PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1")
    driver = (
        "import json, sys\n"
        "from finbert2.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    code = main(argv)\n"
        "    assert code == 0, (argv, code)\n"
    )
    before = _snapshot(REPO_ROOT, home, temp)
    result = subprocess.run([sys.executable, "-c", driver, json.dumps(_stages(runs))], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=1100)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    after = _snapshot(REPO_ROOT, home, temp)

    written = sorted(p for p, stamp in after.items() if before.get(p) != stamp)
    cache = home / ".cache"
    outside = [p for p in written if not _inside(p, cache)]
    assert outside == [], f"written outside the runs folder: {outside[:10]}"
    assert not any(before.get(p) for p in written), "a file that existed before was changed"
    assert any(_inside(p, cache / "finbert2" / "jieba") for p in written)  # jieba's cache went to ours, not /tmp
    assert list(temp.iterdir()) == []  # nothing left in the temp folder either
    for stage in ("tokenizer", "mlm", "retromae", "classify", "classify_baseline", "mine", "retriever",
                  "retriever_eval", "index", "topics"):
        assert (runs / stage / "run_config.json").is_file(), stage
