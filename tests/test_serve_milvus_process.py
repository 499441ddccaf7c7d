"""Processes on a Milvus index: SIGKILL during writes loses no acknowledged document and resurrects no
deleted one; two serve workers share one index through a Milvus server (``FINBERT2_MILVUS_URI`` when
set, else a Milvus Lite file served on a TCP port, which speaks the same client protocol)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from finbert2.retrieve.search import format_document  # noqa: E402
from finbert2.serve.store import split_windows  # noqa: E402
from serve_support import NEWS, REPO_ROOT, ServerProcess, free_port, make_retriever  # noqa: E402
from test_serve_api import DOCS  # noqa: E402


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_tokenizer_dir):
    return {"retriever": make_retriever(tiny_tokenizer_dir, tmp_path_factory.mktemp("serve-models") / "retriever")}


# --- processes: SIGKILL during writes; workers sharing a server ------------------------------------------

def milvus_rows(uri: str) -> dict[str, list[dict]]:
    """Every window in the Milvus Lite file, by document, read in a child process (Milvus Lite lets one
    process at a time open a file, and keeps it open until that process exits)."""
    script = ("import json, sys; from finbert2.serve.milvus_store import MilvusIndex; "
              "index = MilvusIndex(sys.argv[1], 64, {}); "
              "print(json.dumps(index.client.query(index.collection, filter='window >= 0', "
              "output_fields=['doc_id', 'window', 'text'], limit=16384)))")
    out = subprocess.run([sys.executable, "-c", script, uri], capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")})
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(rows) < 16384
    by_doc: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["doc_id"], r["window"])):
        by_doc.setdefault(row["doc_id"], []).append(row)
    return by_doc


def child_pids(pid: int) -> list[int]:
    return [int(child) for task in os.listdir(f"/proc/{pid}/task")
            for child in open(f"/proc/{pid}/task/{task}/children").read().split()]


def test_sigkill_during_writes_loses_no_acknowledged_document(model_dirs, tmp_path, request):
    uri = str(tmp_path / "index.db")
    long_text = "".join(NEWS) * 4  # several 400-character windows per document
    acknowledged: set[str] = set()
    deleted: set[str] = set()  # deletes acknowledged
    delete_sent: set[str] = set()  # deletes sent (the one in flight at the kill may or may not have landed)
    process = ServerProcess("--retriever", model_dirs["retriever"], "--index", uri)
    request.addfinalizer(process.stop)
    process.wait_ready()
    cut_off: list[bool] = []

    def write_until_killed():
        n = 0
        with httpx.Client(base_url=process.url, timeout=30) as client:
            while n < 300:
                docs = [{"id": f"d{n}-{k}", "text": f"{n}号文档 {long_text}", "k": k} for k in range(3)]
                try:
                    response = client.post("/index/documents", json={"documents": docs})
                    if response.status_code == 200:
                        acknowledged.update(d["id"] for d in docs)
                    if n % 2:  # every other round deletes one acknowledged document
                        gone = f"d{n - 1}-0"
                        delete_sent.add(gone)
                        if client.request("DELETE", "/index/documents", json={"ids": [gone]}).status_code == 200:
                            deleted.add(gone)
                except httpx.TransportError:
                    cut_off.append(True)
                    return
                n += 1

    writer = threading.Thread(target=write_until_killed)
    writer.start()
    deadline = time.monotonic() + 120
    while len(deleted) < 2:
        assert time.monotonic() < deadline and writer.is_alive(), "no write was acknowledged"
        time.sleep(0.01)
    time.sleep(random.Random(0).uniform(0.2, 1.0))
    # The engine (Milvus Lite's child process) first, in the middle of a write, then the server.
    engines = child_pids(process.process.pid)
    assert engines, "no Milvus Lite engine process under the server"
    for pid in engines:
        os.kill(pid, signal.SIGKILL)
    process.process.send_signal(signal.SIGKILL)
    process.process.wait(timeout=30)
    writer.join(timeout=60)
    assert cut_off, "the kill fell between two writes: nothing was in flight"
    by_doc = milvus_rows(uri)
    assert not (acknowledged - delete_sent) - set(by_doc), "acknowledged documents lost"
    assert not deleted & set(by_doc), "deleted documents came back"
    for doc_id, rows in by_doc.items():  # every document whole: all its windows, in order
        n = doc_id[1:].split("-")[0]
        expected = split_windows(format_document({"text": f"{n}号文档 {long_text}"}), 400, 380)
        assert [r["text"] for r in rows] == expected and [r["window"] for r in rows] == list(range(len(expected)))
    with ServerProcess("--retriever", model_dirs["retriever"], "--index", uri) as restarted:
        assert httpx.get(f"{restarted.url}/info").json()["index"]["documents"] == len(by_doc)


@pytest.fixture
def milvus_server(tmp_path, request):
    """``FINBERT2_MILVUS_URI`` when set (a Milvus server or cluster), else a Milvus Lite file served on a TCP
    port (``python -m finbert2.serve.lite_server``: Milvus Lite's own engine, the real client protocol)."""
    if os.environ.get("FINBERT2_MILVUS_URI"):
        return os.environ["FINBERT2_MILVUS_URI"]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "finbert2.serve.lite_server", str(tmp_path / "shared.db"),
                               f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")})
    request.addfinalizer(lambda: (server.terminate(), server.wait(timeout=30)))
    assert server.stdout.readline().startswith("serving "), "the Milvus Lite server did not start"
    return f"http://127.0.0.1:{port}"


def test_two_workers_share_one_server_index(model_dirs, milvus_server):
    args = ("--retriever", model_dirs["retriever"], "--index", milvus_server,
            "--index_collection", f"test_{os.getpid()}_{free_port()}")  # never an existing one of a shared server
    with ServerProcess(*args) as first, ServerProcess(*args) as second:
        post = httpx.post(f"{first.url}/index/documents", json={"documents": DOCS[:2]}, timeout=60).json()
        assert post["documents"] == 2
        seen = httpx.post(f"{second.url}/search", json={"query": "茅台年报", "mode": "bm25"}, timeout=60).json()["hits"]
        assert seen and seen[0]["id"] == "moutai"
        assert httpx.post(f"{second.url}/index/documents", json={"documents": DOCS[2:]}, timeout=60).json()["documents"] == 4
        assert httpx.request("DELETE", f"{second.url}/index/documents", json={"ids": ["rrr"]}, timeout=60).json()["documents"] == 3
        ids = {h["id"] for h in httpx.post(f"{first.url}/search", json={"query": "利润", "top_k": 10}, timeout=60).json()["hits"]}
        assert ids == {"moutai", "fed", "pv"}
