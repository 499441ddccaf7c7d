"""Arguments of the retrieval commands (names as in FlagEmbedding's encoder-only fine-tuning)."""

from __future__ import annotations

from dataclasses import dataclass, field


from finbert2.errors import ConfigError
from finbert2.retrieve.encoder import QUERY_INSTRUCTION
from finbert2.precision import PrecisionTrainingArguments, bf16_field


PROMPT_HELP = {
    "query": "Query prefix. Default: each model folder's saved query prompt (e5: 'query: '), else FinBERT2's "
             "instruction.",
    "passage": "Passage prefix. Default: each model folder's saved document prompt (e5: 'passage: '), else none.",
}


@dataclass
class RetrieverDataArguments:
    train_data: list[str] | None = field(
        default=None, metadata={"help": "Training JSONL files {query, pos: [str], neg: [str]} (FlagEmbedding format)."}
    )
    eval_data: str | None = field(
        default=None,
        metadata={"help": "Validation folder (corpus.jsonl, <split>_queries.jsonl, <split>_qrels.jsonl) evaluated "
                  "every eval_steps; the best checkpoint by metric_for_best_model is kept."},
    )
    eval_split: str = field(default="test", metadata={"help": "Query/qrels file prefix in eval_data."})
    train_group_size: int = field(
        default=8, metadata={"help": "Passages per query: 1 positive + (group size - 1) hard negatives (upstream: 15)."}
    )
    query_max_len: int | None = field(
        default=None,
        metadata={"help": "Longest query in tokens, instruction included (upstream: 512). Default: the longest training "
                  "query (up to passage_max_len); a smaller value logs how many it cuts. Saved with the model, so "
                  "evaluate, mine, index and serve cut queries where training did."})
    passage_max_len: int = field(default=256, metadata={"help": "Longest passage in tokens (upstream: 512)."})
    pad_to_multiple_of: int | None = field(
        default=8, metadata={"help": "Pad batches to a multiple of this (8 suits GPU tensor cores); 0: to the longest "
                             "text only (FlagEmbedding's default; measured no faster on a CPU)."}
    )
    query_instruction_for_retrieval: str | None = field(
        default=None, metadata={"help": "Prepended to every query in training, evaluation and the saved model. "
                                "Default: the starting model's saved query prompt (e5: 'query: '), else "
                                f"FinBERT2's '{QUERY_INSTRUCTION}'."}
    )
    passage_instruction_for_retrieval: str | None = field(
        default=None, metadata={"help": "Prepended to every passage. Default: the starting model's saved "
                                "document prompt (e5: 'passage: '), else none (upstream)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    eval_k: int = field(default=100, metadata={"help": "Documents retrieved per query in evaluation."})
    early_stopping_patience: int = field(
        default=0, metadata={"help": "With eval_data: stop after this many evaluations without a better "
                             "metric_for_best_model (0: off); the best checkpoint is kept either way."})

    def __post_init__(self):
        if not self.train_data:
            raise ConfigError("retrieve train: give train_data (JSONL with query, pos, neg)")
        if self.train_group_size < 1:
            raise ConfigError("retrieve train: train_group_size must be at least 1")


@dataclass
class RetrieverTrainingArguments(PrecisionTrainingArguments):
    """``TrainingArguments`` plus the contrastive loss's settings."""

    temperature: float = field(default=0.02, metadata={"help": "Softmax temperature of InfoNCE (upstream: 0.01)."})
    negatives_cross_device: bool = field(
        default=False, metadata={"help": "Under torchrun, score every query against every rank's passages."}
    )
    pooling: str | None = field(
        default=None, metadata={"help": "Sentence vector: cls (upstream) or mean. Default: the starting model's "
                                "saved pooling (e5: mean), else cls."})
    normalized: bool = field(default=True, metadata={"help": "L2-normalise vectors (cosine scores; upstream: True)."})
    grad_cache: bool = field(
        default=False,
        metadata={"help": "Gradient caching: exact large-batch contrastive gradients with memory bounded by "
                  "grad_cache_chunk_size inputs per forward pass."},
    )
    grad_cache_chunk_size: int = field(default=16, metadata={"help": "Inputs per forward pass with grad_cache."})
    # Defaults that differ from TrainingArguments': a contrastive batch is not a tensor dataset.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the raw groups for the collator."})
    dataloader_drop_last: bool = field(default=True, metadata={"help": "Equal in-batch negatives in every step."})
    save_only_model: bool = field(default=False, metadata={"help": "Upstream: True (no optimizer state in checkpoints)."})

    def __post_init__(self):
        if self.temperature <= 0:
            raise ConfigError("retrieve train: temperature must be positive")
        if self.pooling not in {None, "cls", "mean"}:
            raise ConfigError("retrieve train: pooling must be cls or mean")
        if self.grad_cache_chunk_size < 1:
            raise ConfigError("retrieve train: grad_cache_chunk_size must be at least 1")
        super().__post_init__()


@dataclass
class MineArguments:
    model_name_or_path: str = field(metadata={"help": "Encoder folder or hub id used to rank the candidates, or "
                                              "'bm25' (jieba + BM25: the first stage a reranker follows)."})
    input_file: str = field(metadata={"help": "JSONL with query and pos (neg, if present, is replaced)."})
    output_file: str | None = field(default=None, metadata={"help": "Training JSONL to write ({query, pos, neg})."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Instead of output_file: a run folder with train.jsonl, run_config.json, metrics.json."},
    )
    candidate_pool: str | None = field(
        default=None, metadata={"help": "JSONL/.txt of {text} passages to draw negatives from (default: all positives)."}
    )
    range_for_sampling: str = field(
        default="10-100", metadata={"help": "Rank range 'start-end' (0-based, end exclusive) to sample negatives from."}
    )
    negative_number: int = field(default=15, metadata={"help": "Negatives per query (upstream group size 15 - 1 = 14 used)."})
    margin: float | None = field(
        default=None,
        metadata={"help": "False-negative guard: drop candidates scoring above positive score - margin (e.g. 0.05)."},
    )
    fill_random: bool = field(
        default=False,
        metadata={"help": "Fill a query left short of negative_number from random pool passages (same rules; "
                          "FlagEmbedding's hn_mine does). Off: it keeps fewer, and one with none is dropped."},
    )
    duplicate_threshold: float | None = field(
        default=None,
        metadata={"help": "Also drop candidates whose cosine to a positive reaches this (e.g. 0.98 with a trained "
                  "encoder). Texts equal to a positive up to whitespace are always dropped."},
    )
    query_instruction_for_retrieval: str | None = field(default=None, metadata={"help": PROMPT_HELP["query"]})
    passage_instruction_for_retrieval: str | None = field(default=None, metadata={"help": PROMPT_HELP["passage"]})
    max_length: int = field(default=512, metadata={"help": "Longest input in tokens."})
    batch_size: int = field(default=64, metadata={"help": "Encoding batch size."})
    use_faiss_ivf: bool = field(default=False, metadata={"help": "Search an IVF index (large pools) instead of flat."})
    bf16: str = bf16_field()
    seed: int = field(default=42, metadata={"help": "Seed of the negative sampling."})
    hybrid: bool = field(default=False, metadata={
        "help": "Rank by reciprocal-rank fusion of the encoder's ranking and BM25's (the hybrid first stage)."})
    overwrite_output_file: bool = field(default=False, metadata={"help": "Replace an existing output_file (or a finished output_dir)."})

    def __post_init__(self):
        if bool(self.output_file) == bool(self.output_dir):
            raise ConfigError("retrieve mine: give exactly one of output_file and output_dir")
        try:
            start, end = (int(x) for x in self.range_for_sampling.split("-"))
        except ValueError:
            raise ConfigError(f"range_for_sampling '{self.range_for_sampling}': expected 'start-end', e.g. 10-100") from None
        if not 0 <= start < end:
            raise ConfigError(f"range_for_sampling '{self.range_for_sampling}': need 0 <= start < end")
        self.range_start, self.range_end = start, end
        if self.negative_number < 1:
            raise ConfigError("negative_number must be at least 1")
        lexical = self.model_name_or_path == "bm25"
        if (lexical or self.hybrid) and (self.margin is not None or self.duplicate_threshold is not None):
            raise ConfigError("retrieve mine: margin and duplicate_threshold compare dense scores; they do not apply "
                              "to BM25 or hybrid mining")
        if lexical and self.hybrid:
            raise ConfigError("retrieve mine: --hybrid fuses an encoder with BM25; give an encoder folder, not bm25")


@dataclass
class EvaluateArguments:
    output_dir: str = field(metadata={"help": "Folder for results.md, per_query/, metrics.json."})
    eval_data: str = field(metadata={"help": "Folder with corpus.jsonl, <split>_queries.jsonl, <split>_qrels.jsonl."})
    models: list[str] = field(
        default_factory=lambda: ["bm25"],
        metadata={"help": "Model folders or hub ids, and/or 'bm25' (jieba + BM25); one table row each."},
    )
    labels: list[str] | None = field(default=None, metadata={"help": "Row names for the models (default: folder names)."})
    split: str = field(default="test", metadata={"help": "Query/qrels file prefix."})
    query_instruction: str | None = field(default=None, metadata={"help": PROMPT_HELP["query"]})
    passage_instruction: str | None = field(default=None, metadata={"help": PROMPT_HELP["passage"]})
    max_length: int = field(default=512, metadata={"help": "Longest input in tokens."})
    batch_size: int = field(default=64, metadata={"help": "Encoding batch size."})
    pooling: str | None = field(default=None, metadata={
        "help": "cls or mean for every dense model; default: each folder's saved pooling, else cls."})
    k: int = field(default=100, metadata={"help": "Documents retrieved per query."})
    bf16: str = bf16_field()
    hybrid: bool = field(default=False, metadata={
        "help": "Add a '<model>+bm25' row per dense model: reciprocal-rank fusion of its run and BM25's "
                "(the fusion `finbert2 serve` uses for mode=hybrid)."})
    rrf_k: int = field(default=60, metadata={"help": "Reciprocal-rank fusion constant k (score 1/(k + rank))."})
    rerank: list[str] | None = field(default=None, metadata={
        "help": "Reranker folder(s) (`finbert2 rerank train`, or an encoder folder: the zero-shot row): add a "
                "'<first>+rerank' row per first stage (BM25, each dense model, each hybrid), its top "
                "rerank_top_k reordered."})
    rerank_top_k: int = field(default=100, metadata={"help": "First-stage documents reranked per query."})
    rerank_first_stages: list[str] | None = field(default=None, metadata={
        "help": "Row labels of the first stages to rerank (e.g. bm25 e5+bm25); default: every first stage. "
                "Reranking is most of an evaluation's time on a CPU."})
    rerank_interpolation: list[float] | None = field(default=None, metadata={
        "help": "Alphas in [0, 1]: a '<first>+rerank@ALPHA' row each, the top K ordered by ALPHA x the reranker's "
                "score + (1 - ALPHA) x the first stage's (min-max normalised per query); choose ALPHA on a "
                "validation folder."})
    rerank_dtype: str = field(default="fp32", metadata={"help": "Reranker precision: fp32, bf16, int8 or auto."})
    rerank_max_length: int | None = field(default=None, metadata={
        "help": "Longest query + passage pair the reranker reads, in tokens (default: the model's, <= 512; "
                "the rerank train max_len it learned at is the usual choice)."})
    rerank_window_chars: int | None = field(default=None, metadata={
        "help": "Score a passage longer than this many characters by its window of this size holding the most "
                "query words (BM25's jieba words; windows every half window) instead of its head: shorter pairs "
                "for long documents, cut where the first stage matched (default: the whole passage)."})

    def __post_init__(self):
        if self.rrf_k < 1:
            raise ConfigError("retrieve evaluate: rrf_k must be at least 1")
        if self.rerank_top_k < 1:
            raise ConfigError("retrieve evaluate: rerank_top_k must be at least 1")
        if self.rerank_dtype not in {"auto", "fp32", "bf16", "int8"}:
            raise ConfigError("retrieve evaluate: rerank_dtype must be fp32, bf16, int8 or auto")
        if self.rerank_max_length is not None and self.rerank_max_length < 8:
            raise ConfigError("retrieve evaluate: rerank_max_length must be at least 8")
        if self.rerank_window_chars is not None and (self.rerank_window_chars < 8 or not self.rerank):
            raise ConfigError("retrieve evaluate: rerank_window_chars needs --rerank MODEL and at least 8")
        if self.rerank_interpolation and not self.rerank:
            raise ConfigError("retrieve evaluate: rerank_interpolation needs --rerank MODEL")
        if any(not 0.0 <= alpha <= 1.0 for alpha in self.rerank_interpolation or []):
            raise ConfigError("retrieve evaluate: rerank_interpolation alphas must lie in [0, 1]")
        if self.rerank_first_stages and not self.rerank:
            raise ConfigError("retrieve evaluate: rerank_first_stages needs --rerank MODEL")
        if self.labels and len(self.labels) > len(self.models):
            raise ConfigError("more labels than models")
        if self.labels and len(set(self.labels)) != len(self.labels):
            raise ConfigError("labels must be unique")
        if self.pooling not in {None, "cls", "mean"}:
            raise ConfigError("retrieve evaluate: pooling must be cls or mean")


MILVUS_INDEX_HELP = "Milvus Lite file (*.db: embedded, nothing to start) or Milvus server (http(s)://host:port)"
MILVUS_TOKEN_HELP = "Token of the Milvus server ('user:password' or an API key; default: $FINBERT2_MILVUS_TOKEN)."


@dataclass
class IndexArguments:
    model_name_or_path: str = field(metadata={"help": "Encoder folder or hub id."})
    corpus: list[str] = field(
        metadata={"help": "JSONL documents: {id?, title?, text} or upstream's fields {title, company, institution, "
                  "industry, author, type, content}."}
    )
    output_dir: str | None = field(default=None, metadata={
        "help": "Folder for index.faiss, docs.jsonl, index_config.json (or give --index)."})
    index: str | None = field(default=None, metadata={
        "help": f"Write into Milvus instead of a folder: {MILVUS_INDEX_HELP}; the index `finbert2 serve --index` "
                "and `retrieve search --index` read. With --from_folder OLD: import an index folder (as `retrieve "
                "import`)."})
    index_token: str | None = field(default=None, metadata={"help": MILVUS_TOKEN_HELP})
    index_collection: str = field(default="finbert2_windows", metadata={"help": "Milvus collection to write."})
    overwrite_index: bool = field(default=False, metadata={
        "help": "Replace an existing Milvus collection of that name (off: refuse it)."})
    window_chars: int = field(default=400, metadata={
        "help": "Milvus --index: characters per window, as `finbert2 serve` splits documents (upstream: 400)."})
    window_stride: int = field(default=380, metadata={"help": "Milvus --index: characters between window starts."})
    user_dict: str | None = field(default=None, metadata={
        "help": "Milvus --index: jieba user dictionary for BM25 (the one the server and search use)."})
    insert_batch_size: int = field(default=1000, metadata={"help": "Milvus --index: windows encoded and written at once."})
    index_type: str = field(default="flat", metadata={"help": "flat (exact) or ivf (large corpora; folder only)."})
    nlist: int = field(default=0, metadata={"help": "IVF cells (0: about 4*sqrt(n))."})
    nprobe: int = field(default=16, metadata={"help": "IVF cells searched per query."})
    query_instruction: str | None = field(default=None, metadata={"help": PROMPT_HELP["query"] + " Stored for search."})
    passage_instruction: str | None = field(default=None, metadata={"help": PROMPT_HELP["passage"]})
    max_length: int = field(default=512, metadata={"help": "Longest input in tokens."})
    batch_size: int = field(default=64, metadata={"help": "Encoding batch size."})
    bf16: str = bf16_field()

    def __post_init__(self):
        if self.index_type not in {"flat", "ivf"}:
            raise ConfigError(f"index_type '{self.index_type}': expected flat or ivf")
        if (self.output_dir is None) == (self.index is None):
            raise ConfigError("retrieve index: give --output_dir FOLDER or --index URI (Milvus), one of them")
        if self.index is not None:
            from finbert2.serve.milvus_store import check_milvus_uri

            check_milvus_uri(self.index)
            if self.index_type != "flat":
                raise ConfigError("retrieve index: --index_type ivf is for folders (a Milvus index is exact, FLAT)")
            if not 0 < self.window_stride <= self.window_chars:
                raise ConfigError("retrieve index: need 0 < window_stride <= window_chars")
            if self.insert_batch_size < 1:
                raise ConfigError("retrieve index: insert_batch_size must be at least 1")


SEARCH_MODES = ("dense", "bm25", "hybrid")


@dataclass
class SearchArguments:
    index_dir: str | None = field(default=None, metadata={"help": "Folder written by `finbert2 retrieve index`."})
    index: str | None = field(default=None, metadata={
        "help": f"{MILVUS_INDEX_HELP} written by `retrieve index --index` or `serve` (a folder: as --index_dir)."})
    index_token: str | None = field(default=None, metadata={"help": MILVUS_TOKEN_HELP})
    index_collection: str = field(default="finbert2_windows", metadata={"help": "Milvus collection to search."})
    query: list[str] | None = field(default=None, metadata={"help": "Query text(s)."})
    queries_file: str | None = field(default=None, metadata={"help": "JSONL {id?, text} or .txt of queries."})
    top_k: int = field(default=10, metadata={"help": "Results per query."})
    mode: str = field(default="dense", metadata={
        "help": "dense, bm25 or hybrid (RRF of both; bm25 and hybrid need a Milvus --index). Milvus hits are "
                "documents (their best window), as `serve`'s /search."})
    rrf_k: int = field(default=60, metadata={"help": "Reciprocal-rank fusion constant of --mode hybrid."})
    filter: str | None = field(default=None, metadata={
        "help": "Milvus --index: JSON object of stored fields a hit must equal (a list: any of them; 'id': "
                "document ids), as /search's filter."})
    user_dict: str | None = field(default=None, metadata={"help": "jieba user dictionary for BM25 (the index's)."})
    output_file: str | None = field(default=None, metadata={"help": "Write results as JSONL here (default: stdout)."})
    batch_size: int = field(default=64, metadata={"help": "Encoding batch size."})

    def __post_init__(self):
        if not self.query and not self.queries_file:
            raise ConfigError("retrieve search: give --query TEXT or --queries_file FILE")
        if (self.index_dir is None) == (self.index is None):
            raise ConfigError("retrieve search: give --index_dir FOLDER or --index URI, one of them")
        if self.mode not in SEARCH_MODES:
            raise ConfigError(f"retrieve search: mode '{self.mode}': expected {', '.join(SEARCH_MODES)}")
        if self.rrf_k < 1:
            raise ConfigError("retrieve search: rrf_k must be at least 1")
        if self.filter is not None:
            import json

            try:
                filters = json.loads(self.filter)
            except json.JSONDecodeError as err:
                raise ConfigError(f"retrieve search: --filter is not JSON ({err})") from None
            if not isinstance(filters, dict):
                raise ConfigError("retrieve search: --filter must be a JSON object {\"field\": value or [values]}")
        if not self.milvus and (self.mode != "dense" or self.filter is not None):
            raise ConfigError("retrieve search: --mode bm25/hybrid and --filter need a Milvus --index (URI); "
                              "a folder index is searched dense")

    @property
    def milvus(self) -> bool:
        from finbert2.serve.milvus_store import is_milvus_uri

        return self.index is not None and is_milvus_uri(self.index)

    @property
    def filters(self) -> dict | None:
        import json

        return json.loads(self.filter) if self.filter is not None else None
