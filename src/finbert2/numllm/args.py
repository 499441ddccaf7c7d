"""Arguments of ``finbert2 numllm train|build-numeric|merge|evaluate`` (with ``TrainingArguments`` for train)."""

from __future__ import annotations

from dataclasses import dataclass, field

from finbert2.errors import ConfigError
from finbert2.precision import bf16_field

COMBINATION_TYPES = ("svd", "linear", "cat", "ties")


@dataclass
class CausalLMArguments:
    """The base causal LM: any Hugging Face folder or hub id (``finbert2 convert gemma-3-270m`` makes one)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base causal LM folder or hub id (e.g. runs/gemma-3-270m, Qwen/Qwen2.5-7B). merge/evaluate: "
                "default the base recorded in the (first) adapter."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, when not the model's own."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the model folder/hub to run."})
    # Size of the from-scratch causal LM (train without model_name_or_path; finbert2.numllm.tiny).
    tiny_hidden_size: int = field(default=64, metadata={"help": "Hidden size of a from-scratch causal LM."})
    tiny_num_hidden_layers: int = field(default=2, metadata={"help": "Layers of a from-scratch causal LM."})
    tiny_vocab_size: int = field(default=800, metadata={"help": "BPE vocabulary of a from-scratch causal LM."})


@dataclass
class LoraArguments:
    """The LoRA module (peft ``LoraConfig``)."""

    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "Module names LoRA wraps (Gemma/Llama/Qwen attention projections by default)."})

    def __post_init__(self):
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise ConfigError("numllm: lora_r and lora_alpha must be at least 1")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError("numllm: lora_dropout must be in [0, 1)")


@dataclass
class NumLLMDataArguments:
    """What one LoRA module is trained on."""

    task: str = field(default="domain", metadata={
        "help": "domain: continual pretraining on a {text} corpus (every token is a target); numeric: supervised "
                "tuning on {prompt, answer} items (only the answer is a target), e.g. build-numeric's output."})
    train_data: list[str] | None = field(default=None, metadata={"help": "Training files (JSONL/CSV/.txt)."})
    eval_data: list[str] | None = field(default=None, metadata={"help": "Held-out files; default: a split of train_data."})
    input_data: list[str] | None = field(default=None, metadata={
        "help": "Without train_data: financial text files to train from. build-numeric's rules (its defaults) split "
                "them by document (validation_split_percentage held out, seeded) into output_dir/items; the domain "
                "module trains on the documents, the numeric one on the items made from them."})
    text_field: str = field(default="text", metadata={"help": "Field holding the text (task domain)."})
    validation_split_percentage: float = field(
        default=5.0, metadata={"help": "Percent of train_data documents/items held out when eval_data is not given."})
    max_seq_length: int = field(default=256, metadata={
        "help": "Tokens per sequence: a domain document is cut into pieces this long (each starting with <bos>); "
                "a numeric prompt is cut from the left so its answer always fits."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on at most this many sequences."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many sequences."})

    def __post_init__(self):
        if self.task not in {"domain", "numeric"}:
            raise ConfigError(f"numllm train: task '{self.task}': expected domain or numeric")
        if not self.train_data and not self.input_data:
            raise ConfigError("numllm train: give train_data (or input_data to build it from)")
        if not 0 <= self.validation_split_percentage < 100:
            raise ConfigError("numllm train: validation_split_percentage must be in [0, 100)")
        if self.max_seq_length < 8:
            raise ConfigError("numllm train: max_seq_length must be at least 8")


@dataclass
class BuildNumericArguments:
    """``build-numeric``: NumCT-style items from financial text (see ``finbert2.numllm.numeric_items``)."""

    output_dir: str = field(metadata={"help": "Folder for train.jsonl (and heldout.jsonl, with the documents split "
                                          "as train_text.jsonl / heldout_text.jsonl), metrics.json."})
    input_data: list[str] | None = field(default=None, metadata={"help": "Financial text files (JSONL {text}, CSV, .txt)."})
    text_field: str = field(default="text", metadata={"help": "Field holding the text."})
    heldout_percentage: float = field(default=0.0, metadata={
        "help": "Percent of the documents whose items go to heldout.jsonl instead (split by document, seeded)."})
    n_options: int = field(default=4, metadata={"help": "Options per item (grid: 4; perturbed: the true value and n-1 perturbed ones)."})
    distractors: str = field(default="grid", metadata={
        "help": "grid: the true value, two perturbations and both together (no option is the centre of the others); "
                "perturbed: the true value and n-1 single perturbations (a no-model edit-distance heuristic finds it)."})
    max_items_per_text: int = field(default=2, metadata={"help": "Numeric variables turned into items per document."})
    max_context_chars: int = field(default=200, metadata={"help": "Longest question context, in characters."})
    max_items: int | None = field(default=None, metadata={"help": "Stop after this many training items."})
    seed: int = field(default=42, metadata={"help": "Seeds every choice (with each item's source line)."})

    def __post_init__(self):
        if not self.input_data:
            raise ConfigError("numllm build-numeric: give input_data")
        if not 2 <= self.n_options <= 10:
            raise ConfigError("numllm build-numeric: n_options must be 2 to 10")
        from finbert2.numllm.numeric_items import DISTRACTORS

        if self.distractors not in DISTRACTORS:
            raise ConfigError(f"numllm build-numeric: distractors '{self.distractors}': expected "
                              f"{' or '.join(DISTRACTORS)}")
        if self.distractors == "grid" and self.n_options != 4:
            raise ConfigError("numllm build-numeric: the grid construction makes 4 options; "
                              "use --distractors perturbed for another n_options")
        if not 0 <= self.heldout_percentage < 100:
            raise ConfigError("numllm build-numeric: heldout_percentage must be in [0, 100)")


@dataclass
class MergeArguments:
    """``merge``: LoRA adapters into the base model, saved as a plain folder."""

    output_dir: str = field(metadata={"help": "Folder for the merged model (safetensors), its tokenizer, metrics.json."})
    adapters: list[str] | None = field(default=None, metadata={"help": "Adapter folders (train's output_dirs)."})
    weights: list[float] | None = field(default=None, metadata={"help": "One weight per adapter (default: all 1)."})
    combination_type: str = field(default="svd", metadata={
        "help": "peft add_weighted_adapter: svd (NumLLM's SVD-based fusion), linear, cat or ties."})
    svd_rank: int | None = field(default=None, metadata={
        "help": "svd: rank of the fused adapter (default: the largest adapter rank; the sum of ranks is exact)."})
    density: float = field(default=0.5, metadata={"help": "ties: share of each adapter's weights kept."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a finished merge in output_dir."})

    def __post_init__(self):
        if not self.adapters:
            raise ConfigError("numllm merge: give adapters (one or more adapter folders)")
        if self.combination_type not in COMBINATION_TYPES:
            raise ConfigError(f"numllm merge: combination_type '{self.combination_type}': expected "
                              f"{', '.join(COMBINATION_TYPES)}")
        if self.weights is not None and len(self.weights) != len(self.adapters):
            raise ConfigError(f"numllm merge: {len(self.weights)} weights for {len(self.adapters)} adapters")


@dataclass
class EvaluateArguments:
    """``evaluate``: multiple-choice accuracy by log-likelihood and held-out perplexity, for several models."""

    output_dir: str = field(metadata={"help": "Folder for results.md, results.json, per-question scores, metrics.json."})
    models: list[str] | None = field(default=None, metadata={
        "help": "name=path pairs: a model folder, or an adapter folder (applied to model_name_or_path). The base "
                "model is always the first row, named base."})
    test_data: list[str] | None = field(default=None, metadata={
        "help": "Question files {question, options, answer, subject}; each is a block of the table."})
    dev_data: list[str] | None = field(default=None, metadata={"help": "Few-shot examples (FinEval dev), by subject."})
    n_shots: list[int] = field(default_factory=lambda: [0], metadata={"help": "Shot counts to evaluate, e.g. 0 5."})
    scoring: str = field(default="letter", metadata={
        "help": "letter: log-probability of each option's letter after the prompt listing them (one forward per "
                "question); option_sum / option_mean: log-likelihood of each option's text (summed / per token) "
                "after the question."})
    max_questions: int | None = field(default=None, metadata={
        "help": "Per test file, a seeded sample of at most this many single-answer questions (the same for every "
                "model); 0 or unset: all."})
    max_prompt_tokens: int = field(default=1024, metadata={"help": "Cut prompts from the left beyond this."})
    perplexity_data: list[str] | None = field(default=None, metadata={"help": "Held-out financial text files."})
    text_field: str = field(default="text", metadata={"help": "Field holding the text of perplexity_data."})
    max_perplexity_texts: int = field(default=50, metadata={"help": "Texts of perplexity_data scored."})
    perplexity_max_tokens: int = field(default=128, metadata={"help": "Tokens per perplexity text."})
    seed: int = field(default=42, metadata={"help": "Seeds the question sample."})
    bf16: str = bf16_field()
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a finished evaluation."})

    def __post_init__(self):
        if self.scoring not in {"letter", "option_sum", "option_mean"}:
            raise ConfigError(f"numllm evaluate: scoring '{self.scoring}': expected letter, option_sum or option_mean")
        if not self.test_data and not self.perplexity_data:
            raise ConfigError("numllm evaluate: give test_data and/or perplexity_data")
        if any(n < 0 for n in self.n_shots):
            raise ConfigError("numllm evaluate: n_shots must be >= 0")
        if any(n > 0 for n in self.n_shots) and not self.dev_data:
            raise ConfigError("numllm evaluate: few-shot needs dev_data")
        for spec in self.models or []:
            if "=" not in spec or not spec.split("=", 1)[0] or not spec.split("=", 1)[1]:
                raise ConfigError(f"numllm evaluate: model '{spec}': expected name=path")
