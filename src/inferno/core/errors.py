"""Every error Inferno raises, and how a client sees it.

Each class carries the HTTP status, the OpenAI error ``type`` and ``code`` a client
receives, and whether another attempt (on another node, or later) may succeed.
Foreign exceptions (socket errors, pydantic, llama.cpp) are translated into this tree
at one boundary each, with ``raise ... from exc``, so nothing else needs to know them.

    InfernoError                         500 server_error / internal_error
    ├── ClientError                      400 invalid_request_error
    │   ├── InvalidRequest               400 invalid_request_error / invalid_value (+param)
    │   │   ├── ContextLengthExceeded    400 invalid_request_error / context_length_exceeded
    │   │   └── UnsupportedParameter     400 invalid_request_error / unsupported_parameter
    │   ├── AuthenticationError          401 authentication_error / invalid_api_key
    │   ├── PermissionDenied             403 permission_error / insufficient_permissions
    │   ├── NotFound                     404 invalid_request_error / not_found
    │   │   └── ModelNotFound            404 invalid_request_error / model_not_found
    │   ├── MethodNotAllowed             405 invalid_request_error / method_not_allowed
    │   ├── RequestTimeout               408 invalid_request_error / request_timeout
    │   ├── PayloadTooLarge              413 invalid_request_error / payload_too_large
    │   ├── RateLimited                  429 rate_limit_error / rate_limit_exceeded   (retryable)
    │   └── HeadersTooLarge              431 invalid_request_error / headers_too_large
    ├── ServiceUnavailable               503 server_error / service_unavailable       (retryable)
    │   ├── NoBackendAvailable           503 server_error / no_backend_available
    │   ├── Overloaded                   503 server_error / overloaded
    │   └── NotReady                     503 server_error / not_ready (loading or draining)
    ├── UpstreamError                    502 server_error / upstream_error            (retryable)
    │   ├── UpstreamConnectError         502 server_error / upstream_connect_error
    │   ├── UpstreamTimeout              504 server_error / upstream_timeout
    │   └── UpstreamProtocolError        502 server_error / upstream_protocol_error
    ├── EngineError                      500 server_error / engine_error
    ├── ModelSourceError                 502 server_error / model_source_error      (retryable)
    ├── ModelIntegrityError              502 server_error / model_integrity_error (digest mismatch)
    ├── ProviderError                    500 server_error / provider_error (governator: a node
    │                                    could not be started/stopped; logged, retried)
    └── ConfigError                      (never reaches a client: the CLI prints it and exits 2)

``retryable`` answers "may another attempt succeed?"; whether the proxy *may* retry
also depends on whether any byte already went to the client (see proxy.forward).
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class InfernoError(Exception):
    status_code: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False
    # Set where a route answers in another API's error shape (Anthropic's on /v1/messages):
    # the body every renderer then sends instead of OpenAI's.
    body_override: bytes | None = None

    def __init__(
        self,
        message: str = "",
        *,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message or self.default_message())
        self.message = message or self.default_message()
        self.param = param
        self.retry_after = retry_after

    @classmethod
    def default_message(cls) -> str:
        return "The server had an error while processing your request."

    def to_dict(self) -> dict[str, Any]:
        return error_dict(self.message, self.type, self.code, self.param)

    def to_json(self) -> bytes:
        if self.body_override is not None:
            return self.body_override
        return orjson.dumps(self.to_dict())

    def headers(self) -> list[tuple[str, str]]:
        if self.retry_after is None:
            return []
        return [("retry-after", str(max(1, round(self.retry_after))))]


def error_dict(message: str, type_: str, code: str | None,
               param: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class ClientError(InfernoError):
    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"

    @classmethod
    def default_message(cls) -> str:
        return "The request was invalid."


class InvalidRequest(ClientError):
    code = "invalid_value"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class UnsupportedParameter(InvalidRequest):
    """A valid request this model or node cannot honour (e.g. embeddings on a chat model)."""

    code = "unsupported_parameter"


class AuthenticationError(ClientError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"

    @classmethod
    def default_message(cls) -> str:
        return "Missing or invalid API key."


class PermissionDenied(ClientError):
    status_code = 403
    type = "permission_error"
    code = "insufficient_permissions"


class NotFound(ClientError):
    status_code = 404
    code = "not_found"

    @classmethod
    def default_message(cls) -> str:
        return "Not found."


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ClientError):
    status_code = 405
    code = "method_not_allowed"


class PayloadTooLarge(ClientError):
    status_code = 413
    code = "payload_too_large"


class RequestTimeout(ClientError):
    status_code = 408
    code = "request_timeout"


class RateLimited(ClientError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True


class HeadersTooLarge(ClientError):
    status_code = 431
    code = "headers_too_large"


class ServiceUnavailable(InfernoError):
    status_code = 503
    code = "service_unavailable"
    retryable = True

    def __init__(self, message: str = "", *, param: str | None = None,
                 retry_after: float | None = 1.0) -> None:
        super().__init__(message, param=param, retry_after=retry_after)

    @classmethod
    def default_message(cls) -> str:
        return "The service is temporarily unavailable; retry later."


class NoBackendAvailable(ServiceUnavailable):
    code = "no_backend_available"


class Overloaded(ServiceUnavailable):
    code = "overloaded"


class NotReady(ServiceUnavailable):
    code = "not_ready"


class UpstreamError(InfernoError):
    status_code = 502
    code = "upstream_error"
    retryable = True

    @classmethod
    def default_message(cls) -> str:
        return "The inference node failed to answer."


class UpstreamConnectError(UpstreamError):
    code = "upstream_connect_error"
    retryable = True  # no node answered (refused, unreachable, closed at once): try another


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"
    retryable = True  # a hung or overloaded node says nothing about the request itself


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"
    # A garbled or cut-short response means the node (or the link) broke, almost never the
    # request: while nothing reached the client, another node may answer it whole.
    retryable = True


class EngineError(InfernoError):
    code = "engine_error"


class ProviderError(InfernoError):
    """A governator provider could not act (process start, Kubernetes API). Never fatal."""

    code = "provider_error"
    retryable = True


class ModelSourceError(InfernoError):
    """A model registry or file server could not be used (unreachable, refused, malformed
    answer). The message names the reference and the answer, never a credential."""

    status_code = 502
    code = "model_source_error"
    retryable = True  # registries recover; a pull resumes where it stopped


class ModelIntegrityError(InfernoError):
    """Downloaded bytes did not match the digest or size the source promised. The bytes are
    quarantined, never used; the message says what was expected, what arrived, and from
    where."""

    status_code = 502
    code = "model_integrity_error"


class ConfigError(InfernoError):
    """A setting is invalid. Raised at start-up; the message names the field and its source."""
