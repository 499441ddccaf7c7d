"""``finbert2 serve``: the HTTP service a RAG stack puts in front of its LLM.

    finbert2 serve --retriever runs/retriever --index runs/index --classifier runs/classify --port 8000
    finbert2 serve --write_openapi docs/openapi.json   # the schema the tests hold the server to

Routes, limits and status codes: README.md ("Serving"). One process holds the models and its index
folder; run several behind a load balancer for more throughput (each with its own index copy, or
one writer).
"""

from __future__ import annotations

import json
import logging
import sys

from finbert2.config import parse_args
from finbert2.data import atomic_write_text
from finbert2.serve.args import ServeArguments


def openapi_schema() -> dict:
    """The app's OpenAPI schema (no model is loaded: the schema depends on the code only)."""
    from finbert2.serve.app import create_app

    return create_app(ServeArguments(retriever="schema-only")).openapi()


def openapi_text() -> str:
    return json.dumps(openapi_schema(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--write_openapi"] and len(argv) == 2:
        atomic_write_text(argv[1], openapi_text())
        return 0
    (args,) = parse_args((ServeArguments,), argv, prog="finbert2 serve")
    import uvicorn

    from finbert2.serve.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn's own SIGTERM handling: stop accepting, let in-flight requests finish, then shut down.
    uvicorn.run(create_app(args), host=args.host, port=args.port, log_level="info",
                timeout_graceful_shutdown=args.graceful_timeout, access_log=False)
    return 0
