"""Routes for clients written against text-embeddings-inference (TEI) and OpenAI's API, beyond the core
/embed, /v1/embeddings and /classify: TEI's ``/tokenize``, ``/decode``, ``/similarity``, ``/embed_all`` and
``/predict``, and OpenAI's ``/v1/models``. Their bodies follow TEI's and OpenAI's schemas; what still
differs from TEI is listed in docs/serve.md."""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from finbert2.serve import schemas
from finbert2.serve.models import truncated_header

ROUTES = ("/tokenize", "/decode", "/similarity", "/embed_all", "/predict", "/v1/models")
# Every refusal these routes can give (documented in the OpenAPI schema, held to by the tests).
CODES = (400, 401, 404, 413, 422, 429, 503)
TEI_ERRORS = {code: {"model": schemas.TEIError} for code in CODES}

router = APIRouter()


def ready_server(request: Request):
    """The app's ``Server``, ready and holding a retriever (these routes use its tokenizer or encoder)."""
    server = request.app.state.server
    server.require_ready()
    server.require_embedder()
    return server


@router.post("/tokenize", response_model=list[list[schemas.SimpleToken]], responses=TEI_ERRORS,
             tags=["tokenizer"], summary="The retriever's tokens of each text (TEI shape)")
async def tokenize(body: schemas.TokenizeRequest, request: Request):
    server = ready_server(request)
    texts = server.check_inputs(body.inputs, "inputs")
    prompt = server.prompt(body.prompt_name)
    return await asyncio.get_running_loop().run_in_executor(
        None, server.embedder.token_spans, [prompt + t for t in texts], body.add_special_tokens)


@router.post("/decode", response_model=list[str], responses=TEI_ERRORS, tags=["tokenizer"],
             summary="Texts of token arrays of the retriever's tokenizer (TEI shape)")
async def decode(body: schemas.DecodeRequest, request: Request):
    server = ready_server(request)
    id_lists = [body.ids] if body.ids and isinstance(body.ids[0], int) else body.ids
    id_lists = server.check_inputs(id_lists, "ids")
    server.check_token_ids(id_lists, "ids")
    return server.embedder.encoder.tokenizer.batch_decode(id_lists, skip_special_tokens=body.skip_special_tokens)


@router.post("/similarity", response_model=list[float], responses=TEI_ERRORS, tags=["embeddings"],
             summary="Cosine of the source sentence with each sentence (TEI shape)")
async def similarity(body: schemas.SimilarityRequest, request: Request):
    server = ready_server(request)
    parameters = body.parameters or schemas.SimilarityParameters()
    sentences = server.check_inputs(body.inputs.sentences, "inputs.sentences")
    (source,) = server.check_inputs(body.inputs.source_sentence, "inputs.source_sentence")
    vectors, _ = await server.embed(request, [source, *sentences], server.prompt(parameters.prompt_name),
                                    parameters.truncate, True, "inputs")
    return (vectors[1:] @ vectors[0]).tolist()


@router.post("/embed_all", response_model=list[list[list[float]]], responses=TEI_ERRORS, tags=["embeddings"],
             summary="Every token's vector of each text, special tokens included (TEI shape)")
async def embed_all(body: schemas.EmbedAllRequest, request: Request):
    server = ready_server(request)
    texts = server.check_inputs(body.inputs, "inputs")
    prompt = server.prompt(body.prompt_name)
    tokenized = await server.tokenize(server.embedder, [prompt + t for t in texts], body.truncate, "inputs")
    # the model thread, not the batcher: these answers are token matrices, not pooled vectors
    states = await asyncio.get_running_loop().run_in_executor(server.model_thread, server.embedder.token_states,
                                                              tokenized.rows)
    return JSONResponse([np.asarray(s).tolist() for s in states],
                        headers=truncated_header(tokenized))


@router.post("/predict", response_model=list[schemas.Prediction] | list[list[schemas.Prediction]],
             responses=TEI_ERRORS, tags=["classification"], summary="/classify in TEI's /predict shape")
async def predict(body: schemas.ClassifyRequest, request: Request):
    answers, tokenized = await request.app.state.server.classify(request, body)
    answers = [[{"score": item["score"], "label": item["label"]} for item in answer] for answer in answers]
    return JSONResponse(answers[0] if isinstance(body.inputs, str) else answers,
                        headers=truncated_header(tokenized))


@router.get("/v1/models", response_model=schemas.ModelList,
            responses={code: {"model": schemas.OpenAIError} for code in (401, 503)}, tags=["embeddings"],
            summary="Served models, the retriever's aliases included (OpenAI shape)")
async def models(request: Request):
    server = request.app.state.server
    server.require_ready()
    names = (server.embedding_names() if server.embedder else []) + list(server.labelers)
    return {"object": "list", "data": [{"id": name, "object": "model", "created": server.loaded_at,
                                        "owned_by": "finbert2"} for name in names]}
