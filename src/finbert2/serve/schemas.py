"""Request and response bodies of every route (they make the committed ``docs/openapi.json``)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _json_path(path: tuple) -> str:
    return ".".join(map(str, path)) or "body"


def check_body_values(value: Any, path: tuple = ()) -> None:
    """Refuse what JSON carries but a stored or echoed answer cannot: lone surrogates (not UTF-8 text) in
    any string or object key, and NaN/Infinity (Python's JSON reader takes them; JSON has no such number)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{_json_path(path)}: not valid Unicode text (a lone surrogate)") from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{_json_path(path)}: numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_body_values(key, path)
            check_body_values(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_body_values(item, (*path, i))


class RequestBody(BaseModel):
    """Every request body: strict types (``true`` is not the integer 1, ``"1"`` is not a number) and only
    finite numbers and valid text, checked before any field is read, so nothing refused is ever written."""

    model_config = ConfigDict(strict=True)

    @model_validator(mode="before")
    @classmethod
    def _finite_numbers_and_valid_text(cls, data: Any) -> Any:
        check_body_values(data)
        return data


def refuse_repeated_ids(ids: list[str], param: str) -> None:
    seen: set[str] = set()
    repeated = list(dict.fromkeys(i for i in ids if i in seen or seen.add(i)))
    if repeated:
        raise ValueError(f"{param}: repeated ids in one request: {', '.join(repeated)} (send each id once)")


class TextInputs(RequestBody):
    inputs: str | list[str] = Field(description="One text or a list of texts.")
    truncate: bool = Field(False, description="Cut inputs longer than the model's max length (else 422).")


class EmbedRequest(TextInputs):
    """TEI's ``/embed``."""

    normalize: bool = Field(True, description="L2-normalise the vectors.")
    prompt_name: str | None = Field(
        None, description="Prepend a prompt saved with the model: 'query' or 'passage' ('document').")


TokenId = Annotated[int, Field(ge=0)]


class OpenAIEmbeddingRequest(RequestBody):
    """OpenAI's ``/v1/embeddings`` (plus ``truncate``, as infinity/TEI accept)."""

    input: str | list[str] | list[TokenId] | list[list[TokenId]] = Field(description=(
        "One text, a list of texts, or token arrays (one list of ids or a list of them) of this model's "
        "tokenizer, without special tokens (see /tokenize); ids outside its vocabulary (tiktoken's): 422."))
    model: str | None = Field(None, description=(
        "Any name: one embedding model is served (as TEI); a classifier's name: 404. See /v1/models."))
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Keep the first N dimensions (re-normalised).")
    user: str | None = None
    truncate: bool = False


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ClassifyRequest(TextInputs):
    """TEI's ``/predict`` plus ``model``."""

    raw_scores: bool = Field(False, description="Logits instead of probabilities.")
    model: str | None = Field(None, description="Classifier name (see /info); default the first one.")


class LabelScore(BaseModel):
    label: str
    score: float
    predicted: bool = Field(description="Chosen: the argmax, or (multi-label) probability >= the saved threshold.")


class SearchRequest(RequestBody):
    query: str = Field(description="The query; empty or blank: 400 `empty`.")
    top_k: int = Field(10, ge=1, le=1000)
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    filter: dict[str, Any] | None = Field(
        None, description="Stored fields that must equal these values (a list: any of them); 'id' filters ids.")
    rerank: bool = Field(False, description="Reorder the top --rerank_top_k hits with the reranker (404 without one).")


class SearchHit(BaseModel):
    id: str
    score: float = Field(description="Mode's score: cosine (dense), BM25, or the fused 1/(k + rank) sum (hybrid).")
    dense_rank: int | None
    bm25_rank: int | None
    dense_score: float | None
    bm25_score: float | None
    text: str = Field(description="The document's best-scoring window.")
    rerank_score: float | None = Field(None, description="The reranker's score of the window (with rerank).")
    window: int
    fields: dict[str, Any]


class SearchResponse(BaseModel):
    query: str
    mode: str
    terms: list[str] = Field(description="The query's BM25 words (for highlighting).")
    hits: list[SearchHit]


class Document(RequestBody):
    model_config = ConfigDict(extra="allow", strict=True)  # any further field is stored and returned with the hits

    id: str = Field(min_length=1)
    text: str = Field(description="The text to index; empty or blank: 400 `empty`.")
    title: str | None = None


class AddDocumentsRequest(RequestBody):
    documents: list[Document] = Field(min_length=1, description="Each id once per request (repeated: 422).")

    @model_validator(mode="after")
    def _each_id_once(self):
        refuse_repeated_ids([d.id for d in self.documents], "documents")
        return self


class DeleteDocumentsRequest(RequestBody):
    ids: list[str] = Field(min_length=1, description="Each id once (repeated: 422).")

    @model_validator(mode="after")
    def _each_id_once(self):
        refuse_repeated_ids(self.ids, "ids")
        return self


class IndexUpdate(BaseModel):
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    missing: list[str] = []
    documents: int
    windows: int


class TEIError(BaseModel):
    error: str
    error_type: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


class Status(BaseModel):
    status: str


# --- TEI's /tokenize, /decode, /similarity, /embed_all, /predict and OpenAI's /v1/models (serve/compat.py) ---

class TokenizeRequest(RequestBody):
    """TEI's ``/tokenize``."""

    inputs: str | list[str] = Field(description="One text or a list of texts.")
    add_special_tokens: bool = True
    prompt_name: str | None = Field(None, description="Prepend a prompt saved with the model (see /embed).")


class SimpleToken(BaseModel):
    id: int
    text: str = Field(description="The input's characters this token covers (a special token: its own text).")
    special: bool
    start: int | None = Field(description="Character offset in the (prompted) input; null for special tokens.")
    stop: int | None


class DecodeRequest(RequestBody):
    """TEI's ``/decode``."""

    ids: list[TokenId] | list[list[TokenId]] = Field(description="One token array or a list of them.")
    skip_special_tokens: bool = True


class SimilarityInput(RequestBody):
    source_sentence: str
    sentences: list[str]


class SimilarityParameters(RequestBody):
    truncate: bool = False
    prompt_name: str | None = None


class SimilarityRequest(RequestBody):
    """TEI's ``/similarity``: the cosine of the source sentence's vector with each sentence's."""

    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


class EmbedAllRequest(TextInputs):
    """TEI's ``/embed_all``: every token's last hidden state, special tokens included."""

    prompt_name: str | None = Field(None, description="Prepend a prompt saved with the model (see /embed).")


class Prediction(BaseModel):
    score: float
    label: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the server loaded the model.")
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
