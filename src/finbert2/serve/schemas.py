"""Request and response bodies of every route (they make the committed ``docs/openapi.json``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _utf8_texts(value: str | list[str]) -> str | list[str]:
    # JSON may carry lone surrogates ("\ud800"): not text, and the tokenizer cannot take them.
    for text in [value] if isinstance(value, str) else value:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("inputs must be valid Unicode text (no lone surrogates)") from None
    return value


def _utf8_values(value: Any) -> None:
    if isinstance(value, str):
        _utf8_texts(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _utf8_values(key)
            _utf8_values(item)
    elif isinstance(value, list):
        for item in value:
            _utf8_values(item)


class TextInputs(BaseModel):
    inputs: str | list[str] = Field(description="One text or a list of texts.")
    truncate: bool = Field(False, description="Cut inputs longer than the model's max length (else 422).")

    _check_inputs = field_validator("inputs")(_utf8_texts)


class EmbedRequest(TextInputs):
    """TEI's ``/embed``."""

    normalize: bool = Field(True, description="L2-normalise the vectors.")
    prompt_name: str | None = Field(
        None, description="Prepend a prompt saved with the model: 'query' or 'passage' ('document').")


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's ``/v1/embeddings`` (plus ``truncate``, as infinity/TEI accept)."""

    input: str | list[str] = Field(description="One text or a list of texts (token arrays are not accepted).")
    model: str | None = Field(None, description="The served retriever's name (see /info); other names: 404.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Keep the first N dimensions (re-normalised).")
    user: str | None = None
    truncate: bool = False

    _check_input = field_validator("input")(_utf8_texts)


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


class SearchRequest(BaseModel):
    query: str = Field(min_length=1)
    top_k: int = Field(10, ge=1, le=1000)
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    filter: dict[str, Any] | None = Field(
        None, description="Stored fields that must equal these values (a list: any of them); 'id' filters ids.")
    rerank: bool = Field(False, description="Reorder the top --rerank_top_k hits with the reranker (404 without one).")

    _check_query = field_validator("query")(_utf8_texts)


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


class Document(BaseModel):
    model_config = ConfigDict(extra="allow")  # any further field is stored and returned with the hits

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    title: str | None = None

    @model_validator(mode="after")
    def _stored_fields_are_text(self):
        _utf8_values(self.model_dump())  # every field is written to the index folder as UTF-8
        return self


class AddDocumentsRequest(BaseModel):
    documents: list[Document] = Field(min_length=1)


class DeleteDocumentsRequest(BaseModel):
    ids: list[str] = Field(min_length=1)


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
