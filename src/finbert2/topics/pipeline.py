"""Fit, describe, draw, save and reuse a BERTopic model over financial titles.

The steps follow upstream's Fin-Topicmodel notebook: document vectors (an encoder, a ``.npy`` or
the TF-IDF/LSA baseline) -> UMAP -> HDBSCAN -> c-TF-IDF over jieba words -> outlier reduction with
a threshold -> ``update_topics``. Everything BERTopic does is BERTopic's own; this module chooses
the parts, writes the outputs and scores the result.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import pandas as pd
from bertopic import BERTopic
from bertopic.backend import BaseEmbedder
from bertopic.vectorizers import ClassTfidfTransformer
from hdbscan import HDBSCAN
from umap import UMAP

from finbert2.data import atomic_write_text, read_topic_docs, write_json
from finbert2.errors import ConfigError
from finbert2.run import RunArguments, prepare_output_dir, setup_logging, write_metrics, write_run_config
from finbert2.topics.args import TopicArguments, TransformArguments
from finbert2.topics.embeddings import (
    ENCODER_DIR,
    LSA_DIR,
    LsaEmbedder,
    encode,
    is_sentence_transformers_folder,
    load_encoder,
    topic_prompt,
    load_npy_embeddings,
    scratch_encoder,
)
from finbert2.topics.metrics import OUTLIER, cluster_scores, npmi_coherence, topic_diversity
from finbert2.topics.inputs import RunInputs, prepare_inputs
from finbert2.topics.plots import document_map, topic_barchart
from finbert2.topics.text import JiebaWordTokenizer, build_vectorizer
from finbert2.precision import command_bf16

logger = logging.getLogger("finbert2.topics")

MODEL_DIR = "model"
META_FILE = "finbert2_topics.json"
WORDS_DIR = "words"
_NUMBERS = re.compile(r"\d+(?:[.,]\d+)*")
METRICS_TOP_N = 10  # topic diversity and NPMI on each topic's top-10 words (upstream's TD)


class TopicEmbedder(BaseEmbedder):
    """BERTopic's documented custom backend over our encoder or the LSA baseline."""

    def __init__(self, model=None, lsa: LsaEmbedder | None = None, batch_size: int = 64, prompt: str = "",
                 bf16: bool = False):
        super().__init__()
        if (model is None) == (lsa is None):
            raise ValueError("give exactly one of model, lsa")
        self.model, self.lsa, self.batch_size, self.prompt, self.bf16 = model, lsa, batch_size, prompt, bf16

    def embed(self, documents: list[str], verbose: bool = False) -> np.ndarray:
        documents = list(documents)
        if self.lsa is not None:
            return self.lsa.transform(documents)
        with torch.autocast(device_type=self.model.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return encode(self.model, documents, self.batch_size, show_progress_bar=verbose, prompt=self.prompt)


# ---------------------------------------------------------------------------------------------
# input


# ---------------------------------------------------------------------------------------------
# fit


def build_topic_model(args: TopicArguments, embedder: TopicEmbedder | None, vectorizer) -> BERTopic:
    umap_model = UMAP(n_neighbors=args.umap_n_neighbors, n_components=args.umap_n_components,
                      min_dist=args.umap_min_dist, metric=args.umap_metric, init=args.umap_init,
                      random_state=args.seed)
    hdbscan_model = HDBSCAN(min_cluster_size=args.hdbscan_min_cluster_size, min_samples=args.hdbscan_min_samples,
                            metric=args.hdbscan_metric, cluster_selection_method=args.cluster_selection_method,
                            prediction_data=True)
    return BERTopic(
        embedding_model=embedder,
        umap_model=umap_model,
        hdbscan_model=hdbscan_model,
        vectorizer_model=vectorizer,
        ctfidf_model=ClassTfidfTransformer(),
        top_n_words=args.top_n_words,
        nr_topics=args.nr_topics_value,
        calculate_probabilities=False,
        verbose=True,
    )


def topic_centroids(embeddings: np.ndarray, topics: list[int]) -> np.ndarray:
    """Mean embedding per topic, rows in BERTopic's order (sorted ids, -1 first when present)."""
    topics_arr = np.asarray(topics)
    return np.vstack([embeddings[topics_arr == t].mean(axis=0) for t in sorted(set(topics))])


def representative_titles(embeddings: np.ndarray, topics: list[int], texts: list[str], k: int) -> dict[int, list[str]]:
    """Per topic, the ``k`` titles closest (cosine) to the topic's centroid; near-duplicates shown once."""
    topics_arr = np.asarray(topics)
    normed = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    result: dict[int, list[str]] = {}
    for topic in sorted(set(topics)):
        ids = np.flatnonzero(topics_arr == topic)
        centre = normed[ids].mean(axis=0)
        order = ids[np.argsort(-(normed[ids] @ centre), kind="stable")]
        chosen: list[str] = []
        seen: set[str] = set()
        for i in order:
            shape = _NUMBERS.sub("#", texts[i])  # titles differing only in figures count once
            if shape not in seen:
                seen.add(shape)
                chosen.append(texts[i])
            if len(chosen) == k:
                break
        result[int(topic)] = chosen
    return result


def prepare_vectors(args: TopicArguments, npy: np.ndarray | None, tokenizer: JiebaWordTokenizer, scratch_dir: Path):
    """Load whatever produces the vectors (before any output is written): ``(embedder, npy, source)``."""
    if args.embedding_backend == "tfidf":
        return TopicEmbedder(lsa=LsaEmbedder(tokenizer, args.lsa_components, seed=args.seed)), None, "tfidf"
    if args.model_name_or_path:
        model = load_encoder(args.model_name_or_path, args.tokenizer_name, args.max_seq_length,
                             args.trust_remote_code, args.cache_dir)
        prompt = topic_prompt(model, args.prompt_name)
        logger.info("encoder %s, title prompt %r", args.model_name_or_path, prompt)
        return (TopicEmbedder(model=model, batch_size=args.batch_size, prompt=prompt, bf16=command_bf16(args)), npy,
                args.model_name_or_path)
    if npy is not None:
        return None, npy, args.embeddings
    model = scratch_encoder(args.scratch_tokenizer, scratch_dir, args.seed, args.max_seq_length,
                            hidden_size=args.scratch_hidden_size, num_hidden_layers=args.scratch_num_hidden_layers,
                            num_attention_heads=max(1, args.scratch_hidden_size // 64),
                            intermediate_size=4 * args.scratch_hidden_size)
    return TopicEmbedder(model=model, batch_size=args.batch_size, bf16=command_bf16(args)), None, "scratch"


def run(args: TopicArguments, run_args: RunArguments, inputs: RunInputs | None = None) -> dict:
    """Fit and write everything; ``inputs`` from ``prepare_inputs(args)`` (read here when not given)."""
    started = time.perf_counter()
    # ---- validate every input before touching output_dir
    inputs = inputs or prepare_inputs(args)
    docs, tokenizer, font = inputs.docs, inputs.tokenizer, inputs.font
    with tempfile.TemporaryDirectory() as scratch_dir:
        embedder, npy, source = prepare_vectors(args, inputs.npy, tokenizer, Path(scratch_dir))

        output_dir = prepare_output_dir(args.output_dir, overwrite=run_args.overwrite_output_dir, clear=True)
        setup_logging(output_dir)
        write_run_config(output_dir, args, run_args, stage="topics",
                         extra={"plot_font": str(font.path), "vector_source": source})
        logger.info("%d titles (%d dated); vectors from %s; font %s", len(docs.texts),
                    sum(d is not None for d in docs.dates), source, font.name)

        # ---- vectors
        t0 = time.perf_counter()
        if npy is not None:
            embeddings = npy
        elif embedder.lsa is not None:
            embeddings = embedder.lsa.fit_transform(docs.texts)
        else:
            embeddings = embedder.embed(docs.texts, verbose=True)
        embed_seconds = time.perf_counter() - t0
        np.save(output_dir / "embeddings.npy", embeddings)

        # ---- BERTopic: UMAP -> HDBSCAN -> c-TF-IDF
        t0 = time.perf_counter()
        vectorizer = build_vectorizer(tokenizer, min_df=args.min_df)
        topic_model = build_topic_model(args, embedder, vectorizer)
        raw_topics, _ = topic_model.fit_transform(docs.texts, embeddings=embeddings)
        raw_topics = [int(t) for t in raw_topics]
        reduced = np.asarray(topic_model.umap_model.embedding_)  # the space HDBSCAN clustered in
        if args.nr_topics_value is not None:
            raw_topics = [int(t) for t in topic_model.topics_]
        topics = list(raw_topics)
        if args.outlier_strategy != "none" and OUTLIER in topics and len(set(topics)) > 1:
            topics = [int(t) for t in topic_model.reduce_outliers(
                docs.texts, raw_topics, strategy=args.outlier_strategy, threshold=args.outlier_threshold,
                embeddings=embeddings if args.outlier_strategy == "embeddings" else None)]
            topic_model.update_topics(docs.texts, topics=topics, vectorizer_model=vectorizer,
                                      top_n_words=args.top_n_words)
            # Centroids of the final assignment, so transform() of new titles matches what was fitted.
            topic_model.topic_embeddings_ = topic_centroids(embeddings, topics)
        fit_seconds = time.perf_counter() - t0
        logger.info("outliers: %d -> %d of %d titles", raw_topics.count(OUTLIER), topics.count(OUTLIER), len(topics))

        # ---- tables
        names = {int(t): name for t, name in topic_model.topic_labels_.items()}
        reps = representative_titles(embeddings, topics, docs.texts, args.representative_docs)
        sizes = pd.Series(topics).value_counts()
        topic_rows = []
        topic_words: dict[int, list[tuple[str, float]]] = {}
        for topic in sorted(set(topics)):
            words = [(w, float(s)) for w, s in (topic_model.get_topic(topic) or []) if w]
            topic_words[topic] = words
            topic_rows.append({
                "topic": topic, "size": int(sizes[topic]), "name": names.get(topic, str(topic)),
                "top_words": " ".join(w for w, _ in words),
                "representative_titles": " | ".join(reps.get(topic, [])),
            })
        atomic_write_text(output_dir / "topics.csv", pd.DataFrame(topic_rows).to_csv(index=False))

        # ---- pictures (PNG with a checked CJK font) and BERTopic's interactive HTML
        coords = UMAP(n_neighbors=args.umap_n_neighbors, n_components=2, min_dist=0.1, metric=args.umap_metric,
                      init=args.umap_init, random_state=args.seed).fit_transform(embeddings)
        doc_table = pd.DataFrame({"doc_id": range(len(docs.texts)), "text": docs.texts, "date": docs.dates,
                                  "topic": topics, "raw_topic": raw_topics,
                                  "topic_name": [names.get(t, str(t)) for t in topics],
                                  "x": coords[:, 0], "y": coords[:, 1]})
        atomic_write_text(output_dir / "doc_topics.csv", doc_table.to_csv(index=False))

        real_topics = [t for t in sorted(set(topics)) if t != OUTLIER]
        largest = sorted(real_topics, key=lambda t: -int(sizes[t]))[: args.plot_topics]
        short_names = {t: "_".join(w for w, _ in topic_words[t][:3]) or str(t) for t in real_topics}
        font.check([w for t in largest for w, _ in topic_words[t]] + list(short_names.values()))
        drawn = topic_barchart(output_dir / "topics_barchart.png",
                               [(t, short_names[t], topic_words[t]) for t in largest], font)
        drawn += document_map(output_dir / "documents_map.png", coords, topics,
                              {t: f"{t} {n}" for t, n in short_names.items()}, font)
        write_json(output_dir / "pictures.json", {"font_path": str(font.path), "font_name": font.name,
                                                  "labels": drawn})

        dated = [i for i, d in enumerate(docs.dates) if d]
        over_time = None
        if len(dated) >= 2 and real_topics:
            over_time = topic_model.topics_over_time(
                [docs.texts[i] for i in dated], [pd.Timestamp(docs.dates[i]) for i in dated],
                topics=[topics[i] for i in dated], nr_bins=args.time_bins)
            atomic_write_text(output_dir / "topics_over_time.csv", over_time.to_csv(index=False))
        write_html(output_dir / "topics.html", topic_model, docs.texts, coords, over_time, len(largest))

        # ---- scores
        scores = cluster_scores(reduced, topics, include_outliers=args.metrics_include_outliers, seed=args.seed)
        words_only = [[w for w, _ in topic_words[t]] for t in real_topics]
        documents_words = [tokenizer(text) for text in docs.texts]
        metrics = {
            "num_documents": len(docs.texts),
            "num_topics": len(real_topics),
            "outlier_ratio": topics.count(OUTLIER) / len(topics),
            "raw_outlier_ratio": raw_topics.count(OUTLIER) / len(raw_topics),
            **scores,
            "topic_diversity": topic_diversity(words_only, METRICS_TOP_N),
            "npmi": npmi_coherence(words_only, documents_words, METRICS_TOP_N),
            "largest_topic_share": int(sizes[largest[0]]) / len(topics) if largest else None,
            "embed_seconds": embed_seconds,
            "fit_seconds": fit_seconds,
        }

        # ---- the fitted model (safetensors), reusable by `finbert2 topics transform`
        if args.save_model:
            save_topic_model(output_dir / MODEL_DIR, topic_model, args, tokenizer, embedder, source)
        metrics["total_seconds"] = time.perf_counter() - started
        metrics = write_metrics(output_dir, metrics)
    logger.info("metrics: %s", json.dumps(metrics, ensure_ascii=False))
    return metrics


def write_html(path: Path, topic_model: BERTopic, texts: list[str], coords: np.ndarray,
               over_time: pd.DataFrame | None, n_bar_topics: int) -> None:
    """BERTopic's interactive figures in one self-contained page (plotly.js inlined once)."""
    figures = []
    attempts = [
        ("barchart", lambda: topic_model.visualize_barchart(top_n_topics=max(1, n_bar_topics), n_words=8)),
        ("documents", lambda: topic_model.visualize_documents(texts, reduced_embeddings=coords)),
        ("intertopic distance", lambda: topic_model.visualize_topics()),
    ]
    if over_time is not None:
        attempts.append(("topics over time", lambda: topic_model.visualize_topics_over_time(over_time)))
    for name, make in attempts:
        try:
            figures.append(make())
        except (ValueError, TypeError, IndexError, KeyError) as err:
            # e.g. the intertopic map needs more topics than a tiny run finds
            logger.warning("skipping the %s figure: %s", name, err)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    atomic_write_text(path, "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Topics</title></head><body>\n"
                      + "\n".join(parts) + "\n</body></html>\n")


# ---------------------------------------------------------------------------------------------
# save / load / transform


def save_topic_model(model_dir: Path, topic_model: BERTopic, args: TopicArguments, tokenizer: JiebaWordTokenizer,
                     embedder: TopicEmbedder | None, source: str) -> None:
    """BERTopic's safetensors save, plus what rebuilds our word counter and document vectors."""
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    words_dir = model_dir / WORDS_DIR
    words_dir.mkdir()
    userdict_names, stopword_names = [], []
    for kind, files, names in (("userdict", tokenizer.userdict_files, userdict_names),
                               ("stopwords", tokenizer.stopword_files, stopword_names)):
        for i, file in enumerate(files):
            name = f"{kind}_{i}.txt"
            shutil.copyfile(file, words_dir / name)
            names.append(f"{WORDS_DIR}/{name}")

    encoder: dict = {"kind": args.embedding_backend}
    pointer: str | bool = False
    if args.embedding_backend == "tfidf":
        embedder.lsa.save(model_dir / LSA_DIR)
        encoder["path"] = LSA_DIR
    elif embedder is None:
        encoder["kind"] = "npy"  # vectors came from a file: transform needs --embeddings or --model_name_or_path
    elif source == "scratch":
        embedder.model.save(str(model_dir / ENCODER_DIR))
        encoder["path"] = ENCODER_DIR
        pointer = str((model_dir / ENCODER_DIR).resolve())
    else:
        local = Path(source).is_dir()
        encoder.update({"name_or_path": str(Path(source).resolve()) if local else source,
                        "tokenizer_name": args.tokenizer_name, "max_seq_length": args.max_seq_length,
                        "prompt": embedder.prompt})
        if not local or is_sentence_transformers_folder(source):
            pointer = encoder["name_or_path"]
    # BERTopic records the pointer for BERTopic.load(); a plain transformers folder is left out,
    # since sentence-transformers would give it mean pooling, not the CLS pooling we embed with.
    topic_model.save(str(model_dir), serialization="safetensors", save_ctfidf=True, save_embedding_model=pointer)
    write_json(model_dir / META_FILE, {
        "encoder": encoder,
        "userdict": userdict_names,
        "stopwords": stopword_names,
        "min_word_length": tokenizer.min_word_length,
        "batch_size": args.batch_size,
    })


def load_topic_model(model_dir: str | Path, model_name_or_path: str | None = None):
    """``(BERTopic, TopicEmbedder or None)`` from a saved model folder (``BERTopic.load`` underneath)."""
    model_dir = Path(model_dir)
    meta_path = model_dir / META_FILE
    if not meta_path.is_file():
        raise ConfigError(f"{model_dir}: not a saved topic model (no {META_FILE})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    tokenizer = JiebaWordTokenizer([model_dir / p for p in meta["userdict"]], [model_dir / p for p in meta["stopwords"]],
                                   min_word_length=meta["min_word_length"])
    encoder = meta["encoder"]
    batch_size = meta.get("batch_size", 64)
    embedder = None
    if model_name_or_path:
        model = load_encoder(model_name_or_path)
        embedder = TopicEmbedder(model=model, batch_size=batch_size, prompt=topic_prompt(model))
    elif encoder["kind"] == "tfidf":
        embedder = TopicEmbedder(lsa=LsaEmbedder.load(model_dir / encoder["path"], tokenizer))
    elif encoder.get("path"):
        embedder = TopicEmbedder(model=load_encoder(str(model_dir / encoder["path"])), batch_size=batch_size)
    elif encoder.get("name_or_path"):
        embedder = TopicEmbedder(model=load_encoder(encoder["name_or_path"], encoder.get("tokenizer_name"),
                                                    encoder.get("max_seq_length", 64)), batch_size=batch_size,
                                 prompt=encoder.get("prompt", ""))
    topic_model = BERTopic.load(str(model_dir), embedding_model=embedder)
    # BERTopic rebuilds a plain CountVectorizer with the saved vocabulary; put our word counter back.
    topic_model.vectorizer_model = build_vectorizer(tokenizer, vocabulary=topic_model.vectorizer_model.vocabulary_)
    return topic_model, embedder


def transform(args: TransformArguments) -> pd.DataFrame:
    """Assign new titles to the saved model's topics; writes and returns the table."""
    docs = read_topic_docs(args.input_data, text_field=args.text_field)
    npy = load_npy_embeddings(args.embeddings, len(docs.texts)) if args.embeddings else None
    topic_model, embedder = load_topic_model(args.model_dir, args.model_name_or_path)
    if embedder is not None and embedder.model is not None:
        embedder.bf16 = command_bf16(args)
    if npy is None and embedder is None:
        raise ConfigError(f"{args.model_dir}: was fitted on precomputed vectors; give --embeddings (.npy) "
                          "or --model_name_or_path for the new titles")
    embeddings = npy if npy is not None else embedder.embed(docs.texts, verbose=True)
    topics, _ = topic_model.transform(docs.texts, embeddings=embeddings)
    topic_vectors = np.asarray(topic_model.topic_embeddings_)
    normed = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    offset = 1 if -1 in topic_model.topic_sizes_ else 0  # row of topic t is t + offset
    vectors = topic_vectors / np.maximum(np.linalg.norm(topic_vectors, axis=1, keepdims=True), 1e-12)
    similarity = [float(normed[i] @ vectors[int(t) + offset]) for i, t in enumerate(topics)]
    table = pd.DataFrame({
        "doc_id": range(len(docs.texts)), "text": docs.texts, "topic": [int(t) for t in topics],
        "topic_name": [topic_model.topic_labels_.get(int(t), str(t)) for t in topics], "similarity": similarity,
    })
    Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output_file, table.to_csv(index=False))
    return table
