"""``finbert2 serve`` as a real process on loopback: concurrent mixed traffic checked against the models
called directly, the concurrency limit, SIGKILL during index writes, SIGTERM draining in-flight
requests, and the search page in a headless browser. Bounded in count and time; no timing asserts
(throughput lives in benchmarks/serve/)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import numpy as np
import pytest
from serve_support import NEWS, ServerProcess, make_classifier, make_retriever

from finbert2.retrieve.search import format_document
from finbert2.serve.store import DocumentIndex, split_windows

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CLIENTS, REQUESTS_PER_CLIENT = 4, 6


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("serve-process")
    return {"retriever": make_retriever(tiny_tokenizer_dir, root / "retriever"),
            "labeler": make_classifier(tiny_tokenizer_dir, root / "labeler", ["消极", "中性", "积极"])}


@pytest.fixture(scope="module")
def direct(model_dirs):
    from finbert2.classify.inference import SequenceClassifier
    from finbert2.retrieve.encoder import DenseEncoder

    return {"encoder": DenseEncoder.from_pretrained(str(model_dirs["retriever"]), device="cpu"),
            "classifier": SequenceClassifier.from_pretrained(str(model_dirs["labeler"]), device="cpu")}


DOCS = [{"id": f"n{i}", "title": f"新闻{i}", "text": text, "source": "测试"} for i, text in enumerate(NEWS)]


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("serve-process-index") / "index"
    with ServerProcess("--retriever", model_dirs["retriever"], "--classifier", model_dirs["labeler"],
                       "--index", index_dir) as process:
        response = httpx.post(f"{process.url}/index/documents", json={"documents": DOCS}, timeout=60)
        assert response.status_code == 200, response.text
        yield process


def check_response(kind: str, payload, response: httpx.Response, direct) -> None:
    assert response.status_code == 200, (kind, response.status_code, response.text)
    body = response.json()
    if kind == "embed":
        np.testing.assert_allclose(body, direct["encoder"].encode(payload), atol=1e-5)
    elif kind == "openai":
        np.testing.assert_allclose([d["embedding"] for d in body["data"]], direct["encoder"].encode(payload), atol=1e-5)
    elif kind == "classify":
        expected = direct["classifier"].predict(payload)
        for answer, probs in zip(body, expected.probabilities):
            scores = {item["label"]: item["score"] for item in answer}
            np.testing.assert_allclose([scores[n] for n in expected.label_names], probs, atol=1e-5)
    else:  # dense search: the top documents by cosine to the query, as the encoder scores them
        query_vector = direct["encoder"].encode_queries([payload])[0]
        doc_vectors = direct["encoder"].encode_passages([format_document(d) for d in DOCS])
        cosine = dict(zip((d["id"] for d in DOCS), (doc_vectors @ query_vector).tolist()))
        scores = [h["score"] for h in body["hits"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == 3
        for hit in body["hits"]:
            assert hit["score"] == pytest.approx(cosine[hit["id"]], abs=1e-5)
        # the random tiny encoder puts documents within 1e-6 of each other: a clear third place must be beaten
        assert min(scores) >= sorted(cosine.values(), reverse=True)[2] - 1e-5


def test_concurrent_mixed_traffic_all_answered_correctly(server, direct):
    def one_client(seed: int) -> int:
        rng = random.Random(seed)
        checked = 0
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for _ in range(REQUESTS_PER_CLIENT):
                kind = rng.choice(["embed", "openai", "classify", "search"])
                texts = rng.sample(NEWS, rng.randint(1, 4))
                if kind == "embed":
                    response = client.post("/embed", json={"inputs": texts})
                elif kind == "openai":
                    response = client.post("/v1/embeddings", json={"input": texts})
                elif kind == "classify":
                    response = client.post("/classify", json={"inputs": texts})
                else:
                    texts = texts[0][:12]
                    response = client.post("/search", json={"query": texts, "mode": "dense", "top_k": 3})
                check_response(kind, texts, response, direct)
                checked += 1
        return checked

    with ThreadPoolExecutor(CLIENTS) as pool:
        assert sum(pool.map(one_client, range(CLIENTS))) == CLIENTS * REQUESTS_PER_CLIENT
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'finbert2_requests_total{route="/embed",status="200"}' in metrics


def heavy_inputs(n: int = 32) -> list[str]:
    return [("".join(NEWS) * 3)[i:i + 400] for i in range(n)]  # ~400 tokens each: a slow batch


def failures(url: str, error_type: str) -> float:
    prefix = f'finbert2_request_failures_total{{error_type="{error_type}",route="/embed"}} '
    lines = [line for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[1]) if lines else 0.0


def test_a_request_whose_client_left_is_dropped(server):
    before = failures(server.url, "client_gone")
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/embed", json={"inputs": heavy_inputs()}, timeout=0.02)
    deadline = time.monotonic() + 30
    while failures(server.url, "client_gone") == before:
        assert time.monotonic() < deadline, "the server never noticed the client leave"
        time.sleep(0.05)
    assert httpx.post(f"{server.url}/embed", json={"inputs": NEWS[:1]}, timeout=30).status_code == 200


def test_requests_over_the_concurrency_limit_get_429(model_dirs):
    with ServerProcess("--retriever", model_dirs["retriever"], "--max_concurrent_requests", "1") as process:
        def post(_):
            return httpx.post(f"{process.url}/embed", json={"inputs": heavy_inputs()}, timeout=60)

        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(post, range(6)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 429}, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error_type"] == "overloaded"


def index_is_consistent(folder: Path, acknowledged: set[str], dimension: int = 64) -> set[str]:
    """The folder's documents, after checking each is whole: every window present, in order, with a vector."""
    index = DocumentIndex(folder, dimension, {})
    state = index.state
    assert len(state.vectors) == len(state.windows)
    by_doc: dict[str, list[dict]] = {}
    for window in state.windows:
        by_doc.setdefault(window["id"], []).append(window)
    for doc_id, windows in by_doc.items():
        expected = split_windows(format_document(windows[0]["record"]), 400, 380)
        assert [w["window"] for w in windows] == list(range(len(expected))), doc_id
        assert [w["encoded_text"] for w in windows] == expected, doc_id
    missing = acknowledged - set(by_doc)
    assert not missing, f"acknowledged documents lost: {sorted(missing)[:5]}"
    assert not [p for p in folder.iterdir() if p.name.startswith("gen-") and p != state_folder(folder)]
    return set(by_doc)


def state_folder(folder: Path) -> Path:
    return folder / (folder / "CURRENT").read_text(encoding="utf-8").strip()


def test_sigkill_during_index_writes_keeps_a_consistent_index(model_dirs, tmp_path, request):
    folder = tmp_path / "index"
    acknowledged: set[str] = set()
    cut_off: list[bool] = []  # per cycle: the kill landed while a write was in flight
    long_text = "".join(NEWS) * 4  # several 400-character windows per document
    for cycle in range(2):
        process = ServerProcess("--retriever", model_dirs["retriever"], "--index", folder)
        request.addfinalizer(process.stop)  # no server left behind by a failing assertion
        process.wait_ready()
        stop = threading.Event()

        def write_until_killed(cycle=cycle, process=process, stop=stop):
            n = 0
            with httpx.Client(base_url=process.url, timeout=30) as client:
                while not stop.is_set() and n < 200:
                    docs = [{"id": f"c{cycle}-{n}-{k}", "text": f"{n}号文档 {long_text}", "k": k} for k in range(3)]
                    try:
                        response = client.post("/index/documents", json={"documents": docs})
                    except httpx.TransportError:
                        cut_off.append(True)  # killed mid-request: this one was never acknowledged
                        return
                    if response.status_code == 200:
                        acknowledged.update(d["id"] for d in docs)
                    n += 1

        writer = threading.Thread(target=write_until_killed)
        before = len(acknowledged)
        writer.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) == before:  # at least one write of this cycle acknowledged, then kill at random
            assert time.monotonic() < deadline and writer.is_alive(), "no write was acknowledged"
            time.sleep(0.01)
        time.sleep(random.Random(cycle).uniform(0.2, 1.0))
        process.process.send_signal(signal.SIGKILL)
        process.process.wait(timeout=30)
        stop.set()
        writer.join(timeout=60)
        assert len(cut_off) == cycle + 1, "the kill fell between two writes: nothing was in flight"
        present = index_is_consistent_after_crash(folder, acknowledged)
        assert present >= acknowledged
    with ServerProcess("--retriever", model_dirs["retriever"], "--index", folder) as restarted:
        info = httpx.get(f"{restarted.url}/info").json()
        assert info["index"]["documents"] == len(present)
        hits = httpx.post(f"{restarted.url}/search", json={"query": "1号文档", "mode": "bm25"}).json()["hits"]
        assert hits


def index_is_consistent_after_crash(folder: Path, acknowledged: set[str]) -> set[str]:
    # Load a copy: loading removes the generation a crash left half-written, which the server does on restart.
    copy = folder.parent / f"{folder.name}-copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy)
    return index_is_consistent(copy, acknowledged)


def test_sigterm_drains_in_flight_requests(model_dirs, request):
    process = ServerProcess("--retriever", model_dirs["retriever"], "--max_batch_tokens", "2048")
    request.addfinalizer(process.stop)
    process.wait_ready()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(httpx.post, f"{process.url}/embed", json={"inputs": heavy_inputs()}, timeout=120)
                   for _ in range(4)]
        # every request has reached the server (in flight, or already answered on a fast machine) and
        # at least one is still being served when SIGTERM arrives; generous on a loaded CI machine
        deadline = time.monotonic() + 180
        while True:
            serving = in_flight(process.url)
            if serving >= 1 and serving + sum(f.done() for f in futures) >= len(futures):
                break
            assert time.monotonic() < deadline, "requests never arrived"
            time.sleep(0.01)
        process.process.send_signal(signal.SIGTERM)
        responses = [f.result() for f in futures]
    # uvicorn finishes the in-flight requests, shuts down, then re-raises the SIGTERM it caught
    assert process.process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert [r.status_code for r in responses] == [200] * len(futures)
    for response in responses:
        assert np.array(response.json()).shape == (32, 64)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{process.url}/health", timeout=2)


def in_flight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("finbert2_requests_in_flight "):
            return float(line.split()[1])
    return 0.0


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def test_search_page_in_a_headless_browser(server):
    if not (CHROMIUM and CHROMEDRIVER):
        reason = "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"{server.url}/")
        box = driver.find_element(By.ID, "query")
        Select(driver.find_element(By.ID, "mode")).select_by_value("bm25")
        box.send_keys("茅台年报")
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 30).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".hit")))
        hits = driver.find_elements(By.CSS_SELECTOR, ".hit")
        # the title as the heading, the id under it
        assert hits and hits[0].find_element(By.TAG_NAME, "h3").text == "新闻1"
        assert hits[0].find_element(By.CSS_SELECTOR, ".subtitle").text == "n1"
        marked = [m.text for m in hits[0].find_elements(By.TAG_NAME, "mark")]
        assert "茅台" in marked, marked
        assert "source" in hits[0].text and json.dumps("测试", ensure_ascii=False).strip('"') in hits[0].text
        # the query is in the URL: opening that URL runs the same search
        params = parse_qs(urlparse(driver.current_url).query)
        assert params["q"] == ["茅台年报"] and params["mode"] == ["bm25"], driver.current_url
        # Chinese is drawn with the font the server ships (this machine's own fonts are not asked)
        fonts = driver.execute_async_script(
            "const done = arguments[0]; document.fonts.ready.then(() => done({"
            "status: [...document.fonts].map(f => f.family + ':' + f.status),"
            "fetched: performance.getEntriesByType('resource').map(e => e.name)}))")
        assert fonts["status"] == ["FinBERT2 Noto Sans SC:loaded"], fonts  # loaded: fetched, parsed, used
        assert f"{server.url}/fonts/NotoSansSC-Regular.otf" in fonts["fetched"], fonts
        # the filter box narrows the hits; a link with the query and filter reproduces them
        driver.get(f"{server.url}/?" + urlencode({"q": "新闻", "mode": "hybrid", "filter": "title=新闻2|新闻4"}))
        WebDriverWait(driver, 30).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".hit")))
        assert driver.find_element(By.ID, "query").get_attribute("value") == "新闻"
        titles = {h.find_element(By.TAG_NAME, "h3").text for h in driver.find_elements(By.CSS_SELECTOR, ".hit")}
        assert titles == {"新闻2", "新闻4"}, titles
        box = driver.find_element(By.ID, "filter")
        box.clear()
        box.send_keys("source")  # no '=': the page says how to write it, and sends nothing
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 30).until(lambda d: "field=value" in d.find_element(By.ID, "status").text)
        assert driver.find_elements(By.CSS_SELECTOR, ".hit") == []
    finally:
        driver.quit()
