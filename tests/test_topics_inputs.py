"""Fin-TopicModel without BERTopic: word counting, CJK font, LSA vectors, configs, bad input, the JINGEWU converter.

Nothing here imports BERTopic/UMAP/HDBSCAN (numba compiles for tens of seconds per process).
"""

from __future__ import annotations

import json
import warnings

import matplotlib
import numpy as np
import pytest
from conftest import DEMO_DIR, REPO_ROOT, require_public
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font

from finbert2.cli import run_main
from finbert2.config import parse_args
from finbert2.errors import ConfigError, DataError
from finbert2.run import RunArguments
from finbert2.topics.args import TopicArguments
from finbert2.topics.embeddings import LsaEmbedder, load_npy_embeddings
from finbert2.topics.inputs import prepare_inputs
from finbert2.topics.plots import CJKFont, find_cjk_font, topic_barchart
from finbert2.topics.text import build_tokenizer, build_vectorizer

UPSTREAM = ("finbert2-upstream", "Fin-Topicmodel")


# ---- words


def test_tokenizer_keeps_userdict_words_and_drops_stopwords_numbers_and_single_chars(tmp_path):
    tokenizer = build_tokenizer(None, None)  # the package's own small lists
    words = tokenizer("北向资金净流入52.3亿元，央行宣布降准0.25个百分点")
    assert "北向资金" in words  # in our user dictionary: one word, not 北向/资金
    assert "降准" in words
    assert "宣布" not in words and "亿元" not in words  # stopwords
    assert all(len(w) >= 2 for w in words)
    assert not any(any(c.isdigit() for c in w) and not any("\u4e00" <= c <= "\u9fff" for c in w) for w in words)

    userdict = tmp_path / "user.txt"
    userdict.write_text("向资金净\n", encoding="utf-8")  # a made-up word jieba would never find alone
    stop = tmp_path / "stop.txt"
    stop.write_text("央行\n", encoding="utf-8")
    custom = build_tokenizer([str(userdict)], [str(stop)])
    custom_words = custom("北向资金净流入，央行降准")
    assert "向资金净" in custom_words and "央行" not in custom_words
    # the user dictionary stays in this tokenizer: a fresh default one does not know the word
    assert "向资金净" not in build_tokenizer(None, None)("北向资金净流入")


def test_vectorizer_counts_words_not_sentences():
    vectorizer = build_vectorizer(build_tokenizer(None, None))
    vectorizer.fit(["央行降准释放长期资金", "国产芯片替代加速", "央行开展逆回购操作"])
    vocab = set(vectorizer.get_feature_names_out())
    assert {"央行", "降准", "芯片"} <= vocab
    assert all(2 <= len(w) <= 6 for w in vocab)


def test_upstream_word_lists_load():
    folder = require_public(*UPSTREAM)
    tokenizer = build_tokenizer([str(folder / "userdict.txt")], [str(folder / "stopwords_cn.txt")])
    assert len(tokenizer.stopwords) > 2000 and len(tokenizer.user_words) > 3000
    assert "协创数据" in tokenizer("协创数据发布公告")  # an upstream user-dictionary company name


def test_missing_word_list_is_reported(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        build_tokenizer([str(tmp_path / "nope.txt")], None)


# ---- CJK font


def _render_with_warnings(draw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draw()
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def test_png_font_has_the_glyphs_it_draws(tmp_path):
    font = CJKFont()
    labels = topic_barchart(tmp_path / "bar.png", [(0, "央行_降准", [("央行", 0.5), ("降准", 0.3), ("逆回购", 0.2)]),
                                                   (1, "芯片", [("半导体", 0.4), ("芯片", 0.3)])], font)
    assert (tmp_path / "bar.png").stat().st_size > 5000
    drawn = "".join(labels)
    assert "央行" in drawn and "半导体" in drawn
    # checked against the font file itself, independently of the module's own check
    cmap = set(FT2Font(str(font.path)).get_charmap())
    assert all(ord(c) in cmap for c in drawn if not c.isspace())
    # and matplotlib draws them without a missing-glyph warning ...
    def draw(family):
        fig = Figure()
        with matplotlib.rc_context({"font.family": [family]}):
            fig.text(0.1, 0.5, drawn)
            FigureCanvasAgg(fig).draw()
    assert _render_with_warnings(lambda: draw(font.name)) == []
    # ... while matplotlib's default font does warn: the check can fail
    assert _render_with_warnings(lambda: draw("DejaVu Sans"))


def test_a_font_without_cjk_glyphs_is_refused():
    dejavu = font_manager.findfont("DejaVu Sans")
    with pytest.raises(ConfigError, match="no Chinese glyphs"):
        find_cjk_font(dejavu)
    with pytest.raises(ConfigError, match="no such font"):
        find_cjk_font("/nonexistent/font.ttf")


# ---- LSA baseline vectors


def test_lsa_vectors_save_and_load_identically(tmp_path):
    texts = [json.loads(line)["text"] for line in (DEMO_DIR / "topics" / "titles.jsonl").read_text("utf-8").splitlines()[:300]]
    tokenizer = build_tokenizer(None, None)
    lsa = LsaEmbedder(tokenizer, n_components=20, seed=0)
    vectors = lsa.fit_transform(texts)
    assert vectors.shape == (300, 20)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    lsa.save(tmp_path / "lsa")
    reloaded = LsaEmbedder.load(tmp_path / "lsa", tokenizer)
    assert np.allclose(reloaded.transform(texts), vectors, atol=1e-6)
    # equals scikit-learn's TF-IDF followed by the same SVD projection
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize
    tfidf = TfidfVectorizer(tokenizer=tokenizer, token_pattern=None, lowercase=False).fit(texts)
    order = np.array([lsa.vocabulary[w] for w in tfidf.get_feature_names_out()])
    expected = normalize(tfidf.transform(texts) @ lsa.components[:, order].T)
    assert np.allclose(vectors, expected, atol=1e-5)


# ---- configs and bad input (stopped before any work)


def _args(*argv):
    return parse_args((TopicArguments, RunArguments), list(argv))


def test_configs_parse():
    tiny, _ = _args(str(REPO_ROOT / "configs/topics/tiny.yaml"), "--output_dir", "x")
    assert tiny.train_data == ["data/demo/topics/titles.jsonl"] and tiny.scratch_tokenizer and not tiny.tokenizer_name
    base, _ = _args(str(REPO_ROOT / "configs/topics/base.yaml"), "--train_data", "t.csv", "--output_dir", "x")
    assert (base.umap_n_neighbors, base.umap_n_components, base.umap_min_dist, base.umap_metric) == (15, 32, 0.0, "cosine")
    assert (base.hdbscan_min_cluster_size, base.hdbscan_min_samples, base.outlier_threshold) == (2, 1, 0.4)


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("lines, message", [
    (['{"text": "央行降准"}', '{"text": ""}'], ":2: field 'text' is empty"),
    (['{"text": "央行降准", "date": "2023-13-45"}'], ":1: field 'date' is not a date"),
    (['{"title": "央行降准"}'], ":1: missing field 'text'"),
    (['not json'], ":1: invalid JSON"),
])
def test_bad_titles_stop_with_path_and_line(tmp_path, capsys, lines, message):
    from finbert2.topics.cli import main

    data = _write(tmp_path / "titles.jsonl", lines * 20 if "not json" not in lines[0] else lines)
    out = tmp_path / "out"
    code = run_main(main, [str(REPO_ROOT / "configs/topics/tiny.yaml"), "--train_data", data, "--output_dir", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and data + message in err
    assert not out.exists()  # nothing written, nothing that looks finished


def test_bad_npy_and_arguments(tmp_path):
    titles = _write(tmp_path / "t.jsonl", [json.dumps({"text": f"央行降准第{i}次"}, ensure_ascii=False) for i in range(40)])
    np.save(tmp_path / "short.npy", np.zeros((39, 8), dtype=np.float32))
    args, _ = _args("--train_data", titles, "--embeddings", str(tmp_path / "short.npy"), "--output_dir", "o")
    with pytest.raises(DataError, match="has 39 rows but there are 40 documents"):
        prepare_inputs(args)
    np.save(tmp_path / "nan.npy", np.full((40, 8), np.nan, dtype=np.float32))
    with pytest.raises(DataError, match="finite"):
        load_npy_embeddings(tmp_path / "nan.npy", 40)
    with pytest.raises(ConfigError, match="give model_name_or_path"):
        _args("--train_data", titles, "--output_dir", "o")
    with pytest.raises(ConfigError, match="outlier_threshold"):
        _args("--train_data", titles, "--embedding_backend", "tfidf", "--outlier_threshold", "2", "--output_dir", "o")
    few, _ = _args("--train_data", _write(tmp_path / "few.jsonl", ['{"text": "央行降准"}'] * 5),
                   "--embedding_backend", "tfidf", "--output_dir", "o")
    with pytest.raises(DataError, match="needs more"):
        prepare_inputs(few)


# ---- JINGEWU converter


def test_jingewu_converter(tmp_path, capsys):
    csv_path = require_public("jingewu-financial-sentiment-analysis", "data", "CH.csv")
    from finbert2.converters.jingewu import convert, main

    rows = convert(csv_path)
    assert len(rows) == 20582 and len({r["text"] for r in rows}) == 20582
    assert rows[0]["text"] == "接任欧盟轮值主席国 葡萄牙担子不轻"  # full-width space folded
    out = tmp_path / "titles.jsonl"
    assert main([str(csv_path), "--output_file", str(out), "--max_docs", "500", "--seed", "1"]) == 0
    sample = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert len(sample) == 500 and set(sample[0]) == {"text"}
    assert sample == convert(csv_path, 500, 1)  # seeded: the same sample again


def test_jingewu_converter_rejects_other_csv(tmp_path):
    from finbert2.converters.jingewu import convert

    bad = _write(tmp_path / "x.csv", ["title,label", "央行降准,1"])
    with pytest.raises(DataError, match="no 'Text' column"):
        convert(bad)


def test_convert_dispatch_lists_jingewu(run_cli):
    result = run_cli("convert", "--help")
    assert result.returncode == 0 and "jingewu" in result.stdout, result.stderr
