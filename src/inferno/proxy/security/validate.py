"""Checks the proxy makes itself before a request may use a node: cheap, no allocation."""

from __future__ import annotations

from typing import Any

from inferno.core.errors import InvalidRequest

# Fields a client could use to point the proxy (or a node) somewhere else.
_FORBIDDEN = ("api_base", "base_url")
_FLOAT, _INT = 0, 1
_RANGES: dict[str, tuple[float, float, int]] = {
    "temperature": (0.0, 2.0, _FLOAT),
    "top_p": (0.0, 1.0, _FLOAT),
    "presence_penalty": (-2.0, 2.0, _FLOAT),
    "frequency_penalty": (-2.0, 2.0, _FLOAT),
    "max_tokens": (1, 1 << 20, _INT),
    "max_completion_tokens": (1, 1 << 20, _INT),
    "n": (1, 128, _INT),
    "top_logprobs": (0, 20, _INT),
    "top_k": (0, 1 << 20, _INT),
}


def validate_request(data: dict[str, Any]) -> None:
    for name in _FORBIDDEN:
        if name in data:
            raise InvalidRequest(f"The parameter '{name}' is not accepted: the proxy chooses "
                                 "where requests go.", param=name)
    for name, (lo, hi, kind) in _RANGES.items():
        v = data.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or \
                (kind == _INT and not isinstance(v, int)):
            expected = "an integer" if kind == _INT else "a number"
            raise InvalidRequest(f"Invalid type for '{name}': expected {expected}.", param=name)
        if not lo <= v <= hi:
            raise InvalidRequest(f"Invalid value for '{name}': must be between {lo:g} and "
                                 f"{hi:g}.", param=name)


def reserve_tokens(data: dict[str, Any], body: bytes, default: int) -> tuple[int, int]:
    """(tokens to reserve, prompt-token estimate): max_tokens for each of the ``n`` choices
    plus ~4 bytes per prompt token."""
    prompt = len(body) // 4 + 1
    limit = data.get("max_tokens") or data.get("max_completion_tokens")
    completion = limit if isinstance(limit, int) else default
    n = data.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    return prompt + completion * choices, prompt
