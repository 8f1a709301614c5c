"""From a parsed request to a routing decision: canary split, profile choice, context.

Prompt-prefix hashes are computed only when the chosen profile has a plugin that needs
them, so the common path does no hashing at all.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Sequence
from typing import Any

from inferno.core.routing_config import RoutingConfig
from inferno.proxy.pool import Node
from inferno.proxy.routing import Decision, Profile, RouteContext

PREFIX_BLOCK = 128  # characters per prefix block
MAX_BLOCKS = 64


class Router:
    def __init__(self, config: RoutingConfig, profiles: dict[str, Profile],
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.profiles = profiles
        self.default = profiles[config.default_profile]
        self._rng = rng or random.Random()
        # Time spent routing (context and profile), for /router/state and bench/.
        self.calls = 0
        self.seconds = 0.0
        self._canary = {
            model: (list(split), list(split.values())) for model, split in config.canary.items()
            if sum(split.values()) > 0
        }

    def target_model(self, model: str) -> str:
        """The served model a request for ``model`` goes to (weighted canary split)."""
        split = self._canary.get(model)
        if split is None:
            return model
        names, weights = split
        return self._rng.choices(names, weights=weights, k=1)[0]

    def profile_for(self, model: str, requested: str | None) -> Profile:
        if requested and requested in self.profiles:
            return self.profiles[requested]
        name = self.config.model_profiles.get(model)
        return self.profiles[name] if name else self.default

    def route(self, profile: Profile, nodes: Sequence[Node], *, model: str, stream: bool,
              user: str | None, session: str | None, body: dict[str, Any]) -> Decision:
        started = time.perf_counter()
        ctx = RouteContext(
            model=model, stream=stream, user=user, session=session or user,
            prefix_blocks=prefix_blocks(body) if profile.needs_prefix else (),
            now=time.monotonic())
        decision = profile.route(nodes, ctx)
        self.calls += 1
        self.seconds += time.perf_counter() - started
        return decision


def prefix_blocks(body: dict[str, Any]) -> tuple[int, ...]:
    """Chained CRC32 of each 128-character block of the prompt: equal hashes at depth k
    mean equal prompts up to block k (deterministic across processes, unlike hash())."""
    text = _prompt_text(body)
    out: list[int] = []
    h = 0
    for i in range(0, min(len(text), PREFIX_BLOCK * MAX_BLOCKS), PREFIX_BLOCK):
        block = text[i:i + PREFIX_BLOCK]
        if len(block) < PREFIX_BLOCK:
            break  # a partial last block would never match a longer prompt's
        h = zlib.crc32(block.encode(), h)
        out.append(h)
    return tuple(out)


def _prompt_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            if isinstance(m, dict):
                content = m.get("content")
                parts.append(f"<{m.get('role')}>{content if isinstance(content, str) else ''}")
        return "".join(parts)
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""
