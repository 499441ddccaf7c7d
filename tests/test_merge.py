"""``finbert2 merge``: weight-space interpolation of two checkpoints, alpha fixed or chosen on validation.

The tiny pair, over the demo tokenizer: B a bare 2 x 64 ``BertModel`` saved as a sentence-transformers
model with e5's prompts and mean pooling (as e5 is converted), A the same weights perturbed, saved as
``BertForMaskedLM`` (an MLM head B lacks) with two tokens added to the vocabulary (rows B lacks), as a
continued-pretraining run leaves it.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import DEMO_DIR, small_retrieval_eval
from finbert2.errors import ConfigError, OutputDirError
from finbert2.merge import merge_checkpoints, merge_with_start, parse_alpha
from finbert2.merge.select import best_point, scored_alphas
from finbert2.merge.weights import merge_tensors, plan_merge, read_checkpoints

ADDED_TOKENS = ["新词甲", "新词乙"]
WORDS = "bert.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def tiny_pair(tiny_bert_dir, tmp_path_factory):
    from transformers import AutoTokenizer, BertForMaskedLM, BertModel

    from finbert2.pretrained.e5 import E5_SMALL_PROMPTS
    from finbert2.retrieve.encoder import save_sentence_transformer

    root = tmp_path_factory.mktemp("merge")
    a_dir, b_dir = root / "adapted", root / "start"
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False).save_pretrained(b_dir)
    tokenizer.save_pretrained(b_dir)
    save_sentence_transformer(b_dir, prompts=E5_SMALL_PROMPTS, pooling="mean")
    adapted = BertForMaskedLM.from_pretrained(tiny_bert_dir)
    tokenizer.add_tokens(ADDED_TOKENS)
    adapted.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in adapted.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    adapted.save_pretrained(a_dir)
    tokenizer.save_pretrained(a_dir)
    a = load_file(a_dir / "model.safetensors")
    b = {f"bert.{k}": v for k, v in load_file(b_dir / "model.safetensors").items()}  # B is a bare encoder
    return a_dir, b_dir, a, b


@pytest.fixture(scope="module")
def half_merge(tiny_pair, tmp_path_factory):
    from finbert2.cli import main

    a_dir, b_dir, _, _ = tiny_pair
    out = tmp_path_factory.mktemp("merge") / "half"
    assert main(["merge", str(a_dir), str(b_dir), str(out), "--alpha", "0.5"]) == 0
    return out, json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def test_alpha_ends_are_the_inputs_and_half_is_the_mean(tiny_pair, half_merge):
    a_dir, b_dir, a, b = tiny_pair
    rows = b[WORDS].shape[0]
    assert a[WORDS].shape[0] == rows + len(ADDED_TOKENS)
    checkpoint_a, checkpoint_b = read_checkpoints(a_dir, b_dir)
    plan = plan_merge(checkpoint_a, checkpoint_b)
    ends = {alpha: merge_tensors(checkpoint_a, checkpoint_b, plan, alpha) for alpha in (0.0, 1.0)}
    assert set(ends[1.0]) == set(a) and all(torch.equal(ends[1.0][k], a[k]) for k in a)
    assert set(ends[0.0]) == set(a)  # B's tensors, plus A's head and grown rows
    for key, tensor in b.items():
        assert torch.equal(ends[0.0][key][:rows], tensor), key
    assert torch.equal(ends[0.0][WORDS][rows:], a[WORDS][rows:])
    assert torch.equal(ends[0.0]["cls.predictions.transform.dense.weight"], a["cls.predictions.transform.dense.weight"])

    half = load_file(half_merge[0] / "model.safetensors")  # as written to the folder
    assert set(half) == set(a)
    for key, tensor in b.items():  # 0.5 a + 0.5 b is (a + b) / 2 exactly in binary floating point
        assert torch.equal(half[key][:rows], (a[key][:rows] + tensor) / 2), key
        assert not torch.equal(half[key][:rows], tensor), key  # the perturbation moved every tensor
    assert torch.equal(half[WORDS][rows:], a[WORDS][rows:])


def test_grown_rows_and_head_are_carried_reported_and_the_folder_loads(tiny_pair, half_merge):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    from finbert2.retrieve.encoder import saved_sentence_settings

    a_dir, b_dir, a, b = tiny_pair
    out, metrics = half_merge
    rows = b[WORDS].shape[0]
    assert metrics["alpha"] == 0.5 and metrics["alpha_mode"] == "fixed"
    assert metrics["grown_rows"] == {WORDS: {"from": "A", "rows": [rows, rows + 2]}}
    head = {k for k in a if k.startswith("cls.")}  # B has no head: all of it (its bias too) comes from A
    assert head and metrics["carried_tensors"] == {k: "A" for k in head}
    assert metrics["merged_tensors"] == len(b)
    record = json.loads((out / "run_config.json").read_text())
    assert record["stage"] == "merge" and record["arguments"]["model_a"] == str(a_dir)
    assert "merged at alpha 0.5" in (out / "run.log").read_text(encoding="utf-8")
    assert not list(out.parent.glob(".half.*"))  # the staging folder became the output
    with pytest.raises(OutputDirError, match="holds a finished run"):
        merge_checkpoints(str(a_dir), str(b_dir), out, 1.0)

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == rows + 2 and tokenizer.convert_tokens_to_ids(ADDED_TOKENS[1]) == rows + 1
    with_head = AutoModelForMaskedLM.from_pretrained(out)
    assert torch.equal(with_head.cls.predictions.transform.dense.weight, a["cls.predictions.transform.dense.weight"])
    encoder = AutoModel.from_pretrained(out, add_pooling_layer=False)
    assert torch.equal(encoder.embeddings.word_embeddings.weight, with_head.bert.embeddings.word_embeddings.weight)
    # A has no sentence-transformers files: B's pooling, normalisation and e5 prompts are kept
    assert saved_sentence_settings(str(out)) == saved_sentence_settings(str(b_dir))
    assert saved_sentence_settings(str(out))["prompts"]["document"] == "passage: "


def test_mismatched_architecture_stops_with_one_line_naming_it(tiny_pair, capsys, tmp_path):
    from transformers import BertConfig, BertModel

    from finbert2.cli import main

    _, b_dir, _, _ = tiny_pair
    shallow = tmp_path / "one_layer"
    config = BertConfig.from_pretrained(b_dir)
    config.num_hidden_layers = 1
    BertModel(config, add_pooling_layer=False).save_pretrained(shallow)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["merge", str(b_dir), str(shallow), str(out), "--alpha", "0.5"]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot merge different architectures: num_hidden_layers is 2 in {b_dir} but 1 in {shallow}\n")
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_shape_and_vocabulary_mismatches_name_the_first_difference(tiny_pair, tmp_path):
    import shutil

    from transformers import AutoTokenizer, BertTokenizerFast

    _, b_dir, _, b = tiny_pair
    # the same config with a wider feed-forward in the weights only: a shape mismatch
    wide = tmp_path / "wide"
    shutil.copytree(b_dir, wide)
    state = {k.removeprefix("bert."): v for k, v in b.items()}
    state["encoder.layer.0.intermediate.dense.weight"] = torch.zeros(256, 64)
    save_file(state, str(wide / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=re.escape("bert.encoder.layer.0.intermediate.dense.weight has shape "
                                                    f"(128, 64) in {b_dir} but (256, 64) in {wide}")):
        merge_checkpoints(str(b_dir), str(wide), tmp_path / "o1", 0.5)

    # the same weights over a vocabulary with two ids swapped: rows are merged by id, ids must mean the same tokens
    swapped = tmp_path / "swapped"
    shutil.copytree(b_dir, swapped)
    vocab = AutoTokenizer.from_pretrained(b_dir).get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    vocab[by_id[7]], vocab[by_id[9]] = 9, 7
    (swapped / "tokenizer.json").unlink()
    BertTokenizerFast(vocab=vocab).save_pretrained(swapped)
    with pytest.raises(ConfigError, match=re.escape(f"token id 7 is '{by_id[7]}' in {b_dir} but '{by_id[9]}' in {swapped}")):
        merge_checkpoints(str(b_dir), str(swapped), tmp_path / "o2", 0.5)
    with pytest.raises(ConfigError, match="is an input of the merge"):
        merge_checkpoints(str(b_dir), str(b_dir), b_dir, 0.5)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'missing'}: not a model folder")):
        merge_checkpoints(str(b_dir), str(tmp_path / "missing"), tmp_path / "o3", 0.5)
    with pytest.raises(ConfigError, match="alpha auto needs --eval_retrieval_data"):
        merge_checkpoints(str(b_dir), str(b_dir), tmp_path / "o3", "auto")


def test_alpha_values_and_selection_rules():
    assert parse_alpha("0.7") == 0.7 and parse_alpha(1) == 1.0 and parse_alpha("AUTO") == "auto"
    assert parse_alpha("none") is None and parse_alpha(None) is None
    for bad in ("1.5", "-0.1", "half"):
        with pytest.raises(ConfigError, match="alpha must be"):
            parse_alpha(bad)
    assert merge_with_start("unused", "unused", "unused", "none") == {}  # the run keeps its own model
    assert scored_alphas([0.3]) == [0.0, 0.3, 1.0] and len(scored_alphas(None)) == 11
    # the highest score wins; a tie goes to the larger alpha (more of the adapted model)
    curve = [{"alpha": 0.0, "score": 0.5}, {"alpha": 0.4, "score": 0.6}, {"alpha": 0.8, "score": 0.6},
             {"alpha": 1.0, "score": 0.55}]
    assert best_point(curve)["alpha"] == 0.8


def test_auto_with_a_probe_scores_the_mean_and_keeps_the_best(tiny_pair, tmp_path):
    a_dir, b_dir, _, _ = tiny_pair
    eval_dir = small_retrieval_eval(tmp_path / "eval")
    probe = tmp_path / "probe.jsonl"
    probe.write_text("".join((DEMO_DIR / "sentiment" / "validation.jsonl").read_text(encoding="utf-8")
                             .splitlines(keepends=True)[:40]), encoding="utf-8")
    out = tmp_path / "merged"
    metrics = merge_with_start(a_dir, b_dir, out, "auto", eval_retrieval_data=str(eval_dir),
                               eval_classification_data=str(probe), alpha_grid=[0.5], max_length=128)
    curve = metrics["alpha_curve"]
    assert [p["alpha"] for p in curve] == [0.0, 0.5, 1.0]
    for point in curve:
        assert 0 < point["probe_macro_f1"] <= 1
        assert point["score"] == pytest.approx((point["ndcg_at_10"] + point["probe_macro_f1"]) / 2)
    chosen = best_point(curve)
    assert metrics["alpha"] == chosen["alpha"] and metrics["score"] == chosen["score"]
    assert metrics["selected_by"] == "mean of ndcg_at_10 and probe_macro_f1"
    # fitted on training rows instead of cross-validated: recorded, and the same rule
    train = tmp_path / "probe_train.jsonl"
    train.write_text("".join((DEMO_DIR / "sentiment" / "train.jsonl").read_text(encoding="utf-8")
                             .splitlines(keepends=True)[:80]), encoding="utf-8")
    fitted = merge_with_start(a_dir, b_dir, tmp_path / "fitted", "auto", eval_retrieval_data=str(eval_dir),
                              eval_classification_data=str(probe), eval_classification_train=str(train),
                              alpha_grid=[0.5], max_length=128)
    assert fitted["eval_classification_train"] == str(train)
    assert all(0 < point["probe_macro_f1"] <= 1 for point in fitted["alpha_curve"])
    assert fitted["alpha"] == best_point(fitted["alpha_curve"])["alpha"]
    bad_probe = tmp_path / "one_label.jsonl"
    bad_probe.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="one_label.jsonl: the merge probe needs at least 2 labels"):
        merge_with_start(a_dir, b_dir, tmp_path / "o", "auto", eval_retrieval_data=str(eval_dir),
                         eval_classification_data=str(bad_probe))
    assert not (tmp_path / "o").exists()


def test_auto_reuses_the_callers_scores_where_the_merge_is_that_model(tiny_pair, tmp_path, monkeypatch):
    """known_scores (a pretraining run's own validation scores) stand in for alpha 1 (model A as saved); alpha 0 is
    scored anyway when A grew rows (the merge takes them from A, so it is not the start); the curve and the choice are
    those of scoring every alpha."""
    from finbert2.merge.select import AlphaScorer

    a_dir, b_dir, _, _ = tiny_pair
    eval_dir = small_retrieval_eval(tmp_path / "eval")
    scored = merge_with_start(a_dir, b_dir, tmp_path / "scored", "auto", eval_retrieval_data=str(eval_dir),
                              alpha_grid=[0.5], max_length=128)
    points = {p["alpha"]: p for p in scored["alpha_curve"]}
    known = {alpha: {k: points[alpha][k] for k in ("ndcg_at_10", "recall_at_10")} for alpha in (0.0, 1.0)}
    calls = []
    score = AlphaScorer.score
    monkeypatch.setattr(AlphaScorer, "score", lambda self, alpha: calls.append(alpha) or score(self, alpha))
    reused = merge_with_start(a_dir, b_dir, tmp_path / "reused", "auto", eval_retrieval_data=str(eval_dir),
                              alpha_grid=[0.5], max_length=128, known_scores=known)
    assert calls == [0.0, 0.5]  # alpha 1 reused; alpha 0 holds A's grown rows, so it is scored
    assert [p.get("measured_by") for p in reused["alpha_curve"]] == [None, None, "the run"]
    for point in reused["alpha_curve"]:
        assert point["ndcg_at_10"] == pytest.approx(points[point["alpha"]]["ndcg_at_10"], abs=1e-9)
    assert reused["alpha"] == scored["alpha"]


def test_auto_with_a_loss_bound_chooses_among_the_merges_below_it(tiny_pair, tmp_path):
    """held_out_loss is measured at every alpha; with loss_bound only the merges below it compete (the best of
    them by nDCG@10, even when an excluded one scores higher), and when none is below, all compete and the
    shortfall is reported. Here the "loss" is the distance of one merged tensor from model A's, (1 - alpha) *
    |A - B|, so the bound decides exactly which alphas qualify."""
    a_dir, b_dir, a, b = tiny_pair
    key = "bert.encoder.layer.0.attention.self.query.weight"
    gap = float((a[key] - b[key]).norm())
    distance = lambda tensors: float((tensors[key] - a[key]).norm())  # noqa: E731
    eval_dir = small_retrieval_eval(tmp_path / "eval")
    common = dict(eval_retrieval_data=str(eval_dir), alpha_grid=[0.25, 0.5, 0.75], max_length=128,
                  held_out_loss=distance)
    free = merge_with_start(a_dir, b_dir, tmp_path / "free", "auto", **common)
    curve = free["alpha_curve"]
    for point in curve:
        assert point["mlm_loss"] == pytest.approx((1 - point["alpha"]) * gap, rel=1e-4)
    assert free["alpha"] == best_point(curve)["alpha"] and "mlm_loss_bound" not in free
    bound = 0.6 * gap  # alphas 0.5, 0.75 and 1 are below it
    bounded = merge_with_start(a_dir, b_dir, tmp_path / "bounded", "auto", loss_bound=bound, **common)
    eligible = [p for p in curve if p["alpha"] >= 0.5]
    assert bounded["alpha"] == max(eligible, key=lambda p: (p["ndcg_at_10"], p["alpha"]))["alpha"]
    assert bounded["mlm_loss_bound"] == bound and bounded["mlm_loss_below_bound"] > 0
    assert bounded["selected_by"] == "ndcg_at_10 among alphas whose held-out MLM loss is below the unigram bound"
    assert best_point([{"alpha": 0.0, "score": 0.9, "mlm_loss": 3.0}, {"alpha": 1.0, "score": 0.5, "mlm_loss": 1.0}],
                      loss_bound=2.0)["alpha"] == 1.0
    missed = merge_with_start(a_dir, b_dir, tmp_path / "missed", "auto", loss_bound=-1.0, **common)
    assert missed["alpha"] == free["alpha"] and missed["mlm_loss_below_bound"] < 0
    fixed = merge_with_start(a_dir, b_dir, tmp_path / "fixed", 0.25, held_out_loss=distance, loss_bound=bound)
    assert fixed["mlm_loss"] == pytest.approx(0.75 * gap, rel=1e-4) and fixed["mlm_loss_below_bound"] < 0


def test_probe_standardizes_close_unit_vectors_and_can_fit_on_a_training_file(tmp_path, capsys):
    """Sentence vectors of one encoder sit close together on the unit sphere: an unscaled, default-regularized
    regression then predicts the majority class and the probe would rank how spread out an encoder's vectors are.
    Standardized, the class signal is found; with training rows the probe is fitted there and scored on the data."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import cross_val_predict

    from finbert2.merge.select import probe_macro_f1, read_probe_data

    rng = np.random.default_rng(0)

    def close_vectors(n):  # imbalanced, as sentiment data are: 60% neutral, 25% positive, 15% negative
        labels = np.array(["neu"] * (n * 12 // 20) + ["pos"] * (n * 5 // 20) + ["neg"] * (n * 3 // 20))
        direction = {"neu": np.zeros(16), "pos": np.eye(16)[1], "neg": np.eye(16)[2]}
        signal = np.stack([direction[label] for label in labels]) * 0.02
        vectors = np.eye(16)[0] + signal + rng.normal(scale=0.002, size=(n, 16))
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), labels.tolist()

    vectors, labels = close_vectors(40)
    unscaled = f1_score(labels, cross_val_predict(LogisticRegression(max_iter=2000), vectors, labels, cv=5),
                        average="macro")
    assert unscaled < 0.5  # what the probe did before: the majority class
    assert probe_macro_f1(vectors, labels) > 0.95
    train_vectors, train_labels = close_vectors(60)
    assert probe_macro_f1(vectors, labels, train_vectors=train_vectors, train_labels=train_labels) > 0.95

    scored, train = tmp_path / "validation.jsonl", tmp_path / "train.jsonl"
    scored.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "z"}\n', encoding="utf-8")
    train.write_text('{"text": "c", "label": "x"}\n{"text": "d", "label": "y"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"validation.jsonl: labels \['z'\] never occur in the probe's training file"):
        read_probe_data(str(scored), str(train))
    from finbert2.cli import main

    capsys.readouterr()
    assert main(["merge", "a", "b", str(tmp_path / "out"), "--alpha", "auto", "--eval_retrieval_data", "x",
                 "--eval_classification_train", str(train)]) == 2
    assert capsys.readouterr().err == ("error: merge: --eval_classification_train needs --eval_classification_data "
                                       "(the rows it is scored on)\n")
