"""Train a domain tokenizer: SentencePiece unigram on a corpus, domain words appended to a BERT vocab.

    sh FinBERT2/pretrain_wordpiece_tokenizer/spm.sh configs/tokenizer/tiny.yaml --output_dir runs/tokenizer
    finbert2 tokenizer configs/tokenizer/base.yaml --train_data corpus.jsonl --output_dir runs/tokenizer

The output folder is a standard fast-tokenizer folder (``AutoTokenizer.from_pretrained`` loads it)
plus ``sentencepiece/spm.model``, ``domain_words.tsv``, ``run_config.json`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from finbert2.data.splits import split_heldout
from finbert2.config import parse_args
from finbert2.data import iter_corpus, write_json
from finbert2.run import RunArguments, prepare_output_dir, setup_logging, write_metrics, write_run_config
from finbert2.tokenizer.args import TokenizerArguments
from finbert2.tokenizer.domain_words import (
    jieba_single_word_filter,
    load_sentencepiece,
    select_domain_words,
    train_sentencepiece,
    write_vocab_file,
)
from finbert2.tokenizer.vocab import (
    backend_model_type,
    extend_vocabulary,
    is_one_token,
    load_base_tokenizer,
    tokens_per_char,
    train_scratch_tokenizer,
    write_vocab_txt,
)

logger = logging.getLogger("finbert2.tokenizer")

EXTENSION_RECORD = "tokenizer_extension.json"


def run(args: TokenizerArguments, run_args: RunArguments) -> dict:
    started = time.perf_counter()
    # Read and validate every input before touching output_dir.
    documents = list(iter_corpus(args.train_data, args.text_field)) if args.train_data else []
    if args.validation_data:
        train_docs, heldout_docs = documents, list(iter_corpus(args.validation_data, args.text_field))
    else:
        train_docs, heldout_docs = split_heldout(documents, args.validation_split_percentage, args.seed)
    base = load_base_tokenizer(args.base_tokenizer, args.do_lower_case, args.model_max_length) \
        if args.base_tokenizer else None
    given_spm = load_sentencepiece(args.spm_model) if args.spm_model else None
    keep = jieba_single_word_filter(args.user_dict) if args.jieba_filter else None

    output_dir = prepare_output_dir(args.output_dir, overwrite=run_args.overwrite_output_dir, clear=True)
    setup_logging(output_dir)
    write_run_config(output_dir, args, run_args, stage="tokenizer")
    logger.info("corpus: %d training documents, %d held out", len(train_docs), len(heldout_docs))

    spm_dir = output_dir / "sentencepiece"
    if given_spm is not None:
        processor = given_spm
        spm_dir.mkdir(exist_ok=True)
        (spm_dir / "spm.model").write_bytes(Path(args.spm_model).read_bytes())
        logger.info("using SentencePiece model %s (%d pieces)", args.spm_model, processor.GetPieceSize())
    else:
        logger.info("training SentencePiece %s, vocab %d ...", args.model_type, args.vocab_size)
        processor = train_sentencepiece(
            train_docs,
            spm_dir / "spm.model",
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            normalization_rule_name=args.normalization_rule_name,
            character_coverage=args.character_coverage,
            input_sentence_size=args.input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=args.max_sentence_length,
            max_sentencepiece_length=args.max_sentencepiece_length,
            hard_vocab_limit=args.hard_vocab_limit,
            num_threads=args.num_threads,
            minloglevel=1,
        )
    write_vocab_file(processor, spm_dir / "spm.vocab")

    if base is None:
        logger.info("building a %d-entry WordPiece vocab from scratch", args.scratch_vocab_size)
        base = train_scratch_tokenizer(
            train_docs, args.scratch_vocab_size, args.scratch_min_frequency, args.do_lower_case, args.model_max_length
        )
    base_vocab_size = len(base)
    base_tpc = tokens_per_char(base, heldout_docs) if heldout_docs else None

    words = select_domain_words(
        processor,
        base_vocab=set(base.get_vocab()),
        texts=train_docs or None,
        min_frequency=args.min_word_frequency,
        min_length=args.min_word_length,
        max_length=args.max_word_length,
        max_words=args.max_added_words,
        # a word the base already produces as one token (a unigram base has many) is not new
        keep=lambda word: not is_one_token(base, word) and (keep is None or keep(word)),
        num_threads=args.num_threads,
    )
    tokenizer, added = extend_vocabulary(base, [w.word for w in words])  # base ids stay, new ids appended
    logger.info("added %d domain words (vocab %d -> %d)", added, base_vocab_size, len(tokenizer))
    tpc = tokens_per_char(tokenizer, heldout_docs) if heldout_docs else None

    tokenizer.save_pretrained(output_dir)
    if backend_model_type(tokenizer) == "WordPiece":
        write_vocab_txt(tokenizer, output_dir / "vocab.txt")
    (output_dir / "domain_words.tsv").write_text(
        "word\tfrequency\tspm_score\n"
        + "".join(f"{w.word}\t{'' if w.frequency is None else w.frequency}\t{w.score:.4f}\n" for w in words),
        encoding="utf-8",
    )
    write_json(output_dir / EXTENSION_RECORD, {
        "base_tokenizer": args.base_tokenizer or "scratch",
        "base_vocab_size": base_vocab_size,
        "added_tokens": added,
        "method": "unigram pieces" if backend_model_type(tokenizer) == "Unigram" else "added tokens",
    })

    metrics = {
        "vocab_size": len(tokenizer),
        "base_vocab_size": base_vocab_size,
        "added_tokens": added,
        "spm_vocab_size": processor.GetPieceSize(),
        "train_documents": len(train_docs),
        "heldout_documents": len(heldout_docs),
        "base_tokens_per_char": base_tpc,
        "tokens_per_char": tpc,
        "tokens_per_char_reduction": (1 - tpc / base_tpc) if base_tpc else None,
        "train_seconds": time.perf_counter() - started,
    }
    metrics = write_metrics(output_dir, metrics)
    logger.info("metrics: %s", json.dumps(metrics, ensure_ascii=False))
    return metrics


def main(argv: list[str] | None = None) -> int:
    args, run_args = parse_args((TokenizerArguments, RunArguments), argv, prog="finbert2 tokenizer")
    setup_logging()
    run(args, run_args)
    return 0
