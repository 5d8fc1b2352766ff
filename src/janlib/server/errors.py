"""The OpenAI error envelope: {"error": {"message", "type", "param", "code"}} for every failure."""

from __future__ import annotations

import logging

from flask import Flask, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("janlib.server")

_HTTP_CODES = {
    400: ("invalid_request_error", "bad_request"),
    401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    411: ("invalid_request_error", "length_required"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    503: ("server_error", "server_busy"),
}


class APIError(Exception):
    """A failure answered with status and the envelope; param names the offending field (a path);
    details are further members of the error object (llama.cpp's n_prompt_tokens, n_ctx)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict | None = None, details: dict | None = None):
        super().__init__(message)
        default_type, default_code = _HTTP_CODES.get(status, ("server_error", "internal_error"))
        self.status = status
        self.message = message
        self.param = param
        self.code = code or default_code
        self.type = type or default_type
        self.headers = headers or {}
        self.details = details or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          **self.details}}


def invalid(message: str, param: str | None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def context_length_exceeded(n_prompt_tokens: int, n_ctx: int, param: str) -> APIError:
    """OpenAI's message and code, with the two numbers llama.cpp's server adds so that a client can
    trim its prompt by the right amount. On llama-server's own routes (no /v1) the type is llama-server's
    exceed_context_size_error, which its clients look for; the /v1 routes keep OpenAI's."""
    native = has_request_context() and not request.path.startswith("/v1/")
    return APIError(400, f"This model's maximum context length is {n_ctx} tokens. However, your prompt resulted in "
                    f"{n_prompt_tokens} tokens, leaving no room for a completion.", param=param,
                    code="context_length_exceeded", type="exceed_context_size_error" if native else None,
                    details={"n_prompt_tokens": n_prompt_tokens, "n_ctx": n_ctx})


def error_response(error: APIError):
    response = jsonify(error.body())
    response.status_code = error.status
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(error: APIError):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        status = error.code or 500
        messages = {
            404: "no such endpoint",
            405: "method not allowed for this endpoint",
            413: "the request body is too large",
        }
        message = messages.get(status, error.description or error.name)
        headers = {}
        if status == 405 and getattr(error, "valid_methods", None):
            headers["Allow"] = ", ".join(error.valid_methods)
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            if limit:
                message = f"the request body is larger than the limit of {limit} bytes"
        if status == 404:
            from flask import request
            message = f"no such endpoint: {request.method} {request.path}"
        return error_response(APIError(status, message, headers=headers))

    @app.errorhandler(Exception)
    def _internal(error: Exception):
        log.exception("internal error")
        return error_response(APIError(500, f"internal error: {type(error).__name__}", code="internal_error",
                                       type="server_error"))
