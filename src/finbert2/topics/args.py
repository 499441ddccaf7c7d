"""Arguments of the topic-model stage (``finbert2 topics``) and of ``finbert2 topics transform``."""

from __future__ import annotations

from dataclasses import dataclass, field

from finbert2.errors import ConfigError
from finbert2.precision import bf16_field

EMBEDDING_BACKENDS = ("encoder", "tfidf")
OUTLIER_STRATEGIES = ("distributions", "c-tf-idf", "embeddings", "none")


@dataclass
class TopicArguments:
    output_dir: str = field(metadata={"help": "Folder for topics.csv, doc_topics.csv, pictures, the model and metrics."})

    # ---- titles
    train_data: list[str] | None = field(
        default=None, metadata={"help": "Titles: JSONL {'text', 'date'?}, CSV with a title column, or .txt (one a line)."}
    )
    text_field: str = field(default="text", metadata={"help": "Field/column holding the title."})
    date_field: str = field(default="date", metadata={"help": "Field/column holding an optional date (topics over time)."})
    max_docs: int | None = field(
        default=None, metadata={"help": "Use a seeded random sample of this many titles (default: all)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of UMAP, the sample, the LSA SVD and a from-scratch encoder."})

    # ---- document vectors
    embedding_backend: str = field(
        default="encoder",
        metadata={"help": "encoder: a BERT encoder (CLS, normalised); tfidf: the TF-IDF/LSA baseline.",
                  "choices": list(EMBEDDING_BACKENDS)},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Encoder folder or hub id (e.g. a retriever run, valuesimplex-ai-lab/Fin-Retriever-base). "
                  "Empty: a seeded random BERT over scratch_tokenizer (offline demo only)."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer folder/hub id if not the model's own."})
    scratch_tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer of the random demo encoder, used only without model_name_or_path."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where hub downloads are cached."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model-folder code to run (off: never)."})
    embeddings: str | None = field(
        default=None, metadata={"help": "Precomputed (documents x dim) .npy, row i for title i; skips encoding."}
    )
    prompt_name: str | None = field(
        default=None,
        metadata={"help": "Which of the encoder's saved prompts to prepend to every title. Default: 'clustering' "
                  "when the model has one (e5 as converted: 'query: ', e5's advice for clustering), else none; "
                  "'none': no prompt."},
    )
    max_seq_length: int = field(default=64, metadata={"help": "Tokens per title for the encoder (titles are short)."})
    batch_size: int = field(default=64, metadata={"help": "Titles per encoder batch."})
    bf16: str = bf16_field()
    lsa_components: int = field(default=100, metadata={"help": "SVD dimensions of the TF-IDF/LSA baseline."})
    scratch_hidden_size: int = field(default=128, metadata={"help": "Hidden size of a from-scratch demo encoder."})
    scratch_num_hidden_layers: int = field(default=2, metadata={"help": "Layers of a from-scratch demo encoder."})

    # ---- UMAP (upstream: 15 neighbours, 32 dimensions, min_dist 0, cosine, fixed seed)
    umap_n_neighbors: int = field(default=15, metadata={"help": "UMAP n_neighbors (upstream 15)."})
    umap_n_components: int = field(default=32, metadata={"help": "UMAP output dimensions (upstream 32)."})
    umap_min_dist: float = field(default=0.0, metadata={"help": "UMAP min_dist (upstream 0.0)."})
    umap_metric: str = field(default="cosine", metadata={"help": "UMAP metric (upstream cosine)."})
    umap_init: str = field(default="spectral", metadata={
        "help": "UMAP initial layout: spectral (upstream, BERTopic's default) or pca. umap-learn's spectral "
                "layout of a small disconnected piece of the neighbour graph varies from run to run even with "
                "a seed; pca gives bit-identical runs."})

    # ---- HDBSCAN (upstream: min_cluster_size 2, min_samples 1, euclidean)
    hdbscan_min_cluster_size: int = field(default=10, metadata={"help": "HDBSCAN min_cluster_size (upstream 2)."})
    hdbscan_min_samples: int | None = field(
        default=None, metadata={"help": "HDBSCAN min_samples (upstream 1; empty: = min_cluster_size)."}
    )
    hdbscan_metric: str = field(default="euclidean", metadata={"help": "HDBSCAN metric (upstream euclidean)."})
    cluster_selection_method: str = field(default="eom", metadata={"help": "HDBSCAN eom (default) or leaf."})
    nr_topics: str | None = field(
        default=None, metadata={"help": "Merge topics down to this many after fitting ('auto' or a number; empty: keep)."}
    )

    # ---- topic words
    userdict: list[str] | None = field(
        default=None, metadata={"help": "jieba user dictionaries (e.g. upstream userdict.txt); empty: the package's small list."}
    )
    stopwords: list[str] | None = field(
        default=None, metadata={"help": "Stopword files (e.g. upstream stopwords_cn.txt); empty: the package's small list."}
    )
    min_word_length: int = field(default=2, metadata={"help": "Shortest topic word in characters."})
    min_df: int = field(default=1, metadata={"help": "Words in fewer titles than this are not counted."})
    top_n_words: int = field(default=10, metadata={"help": "Words per topic (BERTopic top_n_words; diversity/NPMI use 10)."})

    # ---- outliers and outputs
    outlier_strategy: str = field(
        default="distributions",
        metadata={"help": "BERTopic reduce_outliers strategy (upstream: distributions); none: keep outliers.",
                  "choices": list(OUTLIER_STRATEGIES)},
    )
    outlier_threshold: float = field(default=0.4, metadata={"help": "reduce_outliers threshold (upstream 0.4)."})
    representative_docs: int = field(default=3, metadata={"help": "Representative titles per topic in topics.csv."})
    metrics_include_outliers: bool = field(
        default=False, metadata={"help": "Score outlier titles as a cluster of their own (upstream's script did)."}
    )
    plot_topics: int = field(default=8, metadata={"help": "Largest topics shown in the bar chart."})
    font_path: str | None = field(default=None, metadata={"help": "A .ttf/.otf with CJK glyphs (default: Noto Sans SC)."})
    time_bins: int = field(default=10, metadata={"help": "Time bins of topics over time (when titles carry dates)."})
    save_model: bool = field(default=True, metadata={"help": "Save the fitted model (safetensors) under output_dir/model."})

    def __post_init__(self):
        if not self.train_data:
            raise ConfigError("topics: give train_data (titles)")
        if self.embedding_backend == "encoder" and not (self.model_name_or_path or self.scratch_tokenizer
                                                       or self.embeddings):
            raise ConfigError("topics: give model_name_or_path (an encoder), embeddings (.npy), "
                              "scratch_tokenizer (a random demo encoder) or embedding_backend tfidf")
        if self.embedding_backend == "tfidf" and self.embeddings:
            raise ConfigError("topics: embeddings (.npy) and embedding_backend tfidf exclude each other")
        if self.max_docs is not None and self.max_docs < 2:
            raise ConfigError("topics: max_docs must be at least 2")
        if self.umap_n_neighbors < 2 or self.umap_n_components < 2:
            raise ConfigError("topics: umap_n_neighbors and umap_n_components must be at least 2")
        if self.umap_init not in {"spectral", "pca"}:
            raise ConfigError("topics: umap_init must be spectral or pca")
        if self.hdbscan_min_cluster_size < 2:
            raise ConfigError("topics: hdbscan_min_cluster_size must be at least 2")
        if self.min_word_length < 1 or self.top_n_words < 1:
            raise ConfigError("topics: min_word_length and top_n_words must be positive")
        if not 0 <= self.outlier_threshold <= 1:
            raise ConfigError("topics: outlier_threshold must be in [0, 1]")
        if self.nr_topics is not None and self.nr_topics != "auto":
            try:
                if int(self.nr_topics) < 2:
                    raise ValueError
            except ValueError:
                raise ConfigError("topics: nr_topics must be 'auto' or an integer >= 2") from None

    @property
    def nr_topics_value(self) -> int | str | None:
        return self.nr_topics if self.nr_topics in (None, "auto") else int(self.nr_topics)


@dataclass
class TransformArguments:
    model_dir: str = field(metadata={"help": "A saved topic model (OUTPUT_DIR/model of a topics run)."})
    input_data: list[str] = field(metadata={"help": "New titles: JSONL, CSV or .txt, as for train_data."})
    output_file: str = field(metadata={"help": "CSV to write: doc_id, text, topic, topic_name, similarity."})
    text_field: str = field(default="text", metadata={"help": "Field/column holding the title."})
    embeddings: str | None = field(
        default=None, metadata={"help": "Precomputed .npy for the new titles (required if the model was fitted on one)."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Encoder to embed the new titles with, instead of the one the model recorded."}
    )
    batch_size: int = field(default=64, metadata={"help": "Titles per encoder batch."})
    bf16: str = bf16_field()
