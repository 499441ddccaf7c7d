"""HTTP errors in the two shapes clients expect: TEI's ``{error, error_type}`` on native routes and
OpenAI's ``{"error": {message, type, param, code}}`` under ``/v1``."""

from __future__ import annotations

from fastapi.responses import JSONResponse

OPENAI_PREFIX = "/v1/"

# error_type (TEI's names where TEI has one) -> OpenAI's error "type"
OPENAI_TYPES = {
    "validation": "invalid_request_error", "empty": "invalid_request_error", "not_found": "invalid_request_error",
    "payload_too_large": "invalid_request_error", "unauthorized": "authentication_error",
    "overloaded": "rate_limit_error", "unhealthy": "server_error", "backend": "server_error",
}


class ApiError(Exception):
    """A request the server refuses, with its status code and TEI error type."""

    def __init__(self, status: int, message: str, error_type: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.error_type, self.param = status, message, error_type, param


def error_body(path: str, message: str, error_type: str, param: str | None = None) -> dict:
    # An error may quote the request; a quoted lone surrogate must not make the answer itself unencodable.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    param = param.encode("utf-8", "backslashreplace").decode("utf-8") if param else param
    if path.startswith(OPENAI_PREFIX):
        return {"error": {"message": message, "type": OPENAI_TYPES.get(error_type, "invalid_request_error"),
                          "param": param, "code": error_type}}
    return {"error": message, "error_type": error_type}


def error_response(path: str, err: ApiError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(path, err.message, err.error_type, err.param), status_code=err.status,
                        headers=headers)
