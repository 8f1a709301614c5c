"""Alerts the proxy evaluates itself, delivered to webhooks as Slack-compatible JSON.

Every ``interval`` each rule returns what is wrong now, as ``(subject, detail)`` pairs (a
node, a model, or the proxy). A pair that starts firing, and one that stops, is
notified; a pair still firing is notified again after ``repeat_interval``. One
evaluation's changes are **grouped**: one message per rule and state, listing every
subject. **Silences** (``rule`` or ``rule/subject``, the subject may end in ``*``) keep
matching alerts out of notifications, not out of the state or the timeline.

Delivery runs on the alert task, never on the request path: a POST per webhook with a
short timeout and a few retries; failures are logged and counted, never raised.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("inferno.proxy.alerts")

Check = Callable[[], list[tuple[str, str]]]
Send = Callable[[str, dict[str, Any]], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    summary: str  # what firing means, for the message title
    check: Check
    severity: str = "warning"


@dataclass(slots=True)
class Firing:
    detail: str
    since: float
    notified: float = 0.0


@dataclass(slots=True)
class AlertManager:
    rules: Sequence[Rule]
    webhooks: Sequence[str]
    send: Send
    silences: Sequence[str] = ()
    repeat_interval: float = 3600.0
    clock: Callable[[], float] = time.time
    on_change: Callable[[str, str, str, bool], None] | None = None  # rule, subject, detail, firing
    active: dict[tuple[str, str], Firing] = field(default_factory=dict)

    def silenced(self, rule: str, subject: str) -> bool:
        for s in self.silences:
            name, _, pattern = s.partition("/")
            if name == rule and (not pattern or fnmatch.fnmatchcase(subject, pattern)):
                return True
        return False

    def evaluate(self) -> list[dict[str, Any]]:
        """One round: update the state; the grouped messages to send."""
        now = self.clock()
        messages = []
        for rule in self.rules:
            try:
                current = dict(rule.check())
            except Exception:  # a broken rule must not stop the others
                log.exception("alert rule %s failed", rule.name)
                continue
            fired, again, resolved = [], [], []
            for subject, detail in current.items():
                key = (rule.name, subject)
                state = self.active.get(key)
                if state is None:
                    state = self.active[key] = Firing(detail, now)
                    self._changed(rule.name, subject, detail, True)
                    fired.append((subject, state))
                else:
                    state.detail = detail
                    if now - state.notified >= self.repeat_interval:
                        again.append((subject, state))
            for (name, subject), state in list(self.active.items()):
                if name == rule.name and subject not in current:
                    del self.active[(name, subject)]
                    self._changed(rule.name, subject, state.detail, False)
                    if state.notified:
                        resolved.append((subject, state))
            loud = [(s, f) for s, f in fired + again if not self.silenced(rule.name, s)]
            if loud:
                for _, f in loud:
                    f.notified = now
                messages.append(_message(rule, "firing", loud, now))
            if resolved:
                messages.append(_message(rule, "resolved", resolved, now))
        return messages

    def _changed(self, rule: str, subject: str, detail: str, firing: bool) -> None:
        if self.on_change is not None:
            self.on_change(rule, subject, detail, firing)

    async def notify(self, messages: list[dict[str, Any]]) -> None:
        for msg in messages:
            for url in self.webhooks:
                await self.send(url, msg)

    async def run(self, interval: float) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                await self.notify(self.evaluate())
        finally:
            close = getattr(self.send, "aclose", None)
            if close is not None:
                await close()


def _message(rule: Rule, status: str, items: list[tuple[str, Firing]],
             now: float) -> dict[str, Any]:
    icon = ":red_circle:" if status == "firing" else ":large_green_circle:"
    title = f"{icon} [{status.upper()}] {rule.summary} ({len(items)})"
    lines = [f"• *{subject}*: {f.detail}" for subject, f in items]
    return {
        "text": title + "\n" + "\n".join(lines),
        "attachments": [{"color": "danger" if status == "firing" else "good",
                         "title": title, "text": "\n".join(lines), "ts": int(now)}],
        "inferno": {"rule": rule.name, "status": status, "severity": rule.severity,
                    "alerts": [{"subject": s, "detail": f.detail, "since": f.since}
                               for s, f in items]},
    }


class WebhookSender:
    """POSTs JSON with httpx2: webhooks are usually https://, which the proxy's own client
    (plain HTTP to nodes) does not speak. The URL (a secret, for Slack) is never logged."""

    def __init__(self, timeout: float = 5.0, attempts: int = 3,
                 on_result: Callable[[bool], None] | None = None) -> None:
        import httpx2 as httpx

        self._httpx = httpx
        self._client = httpx.AsyncClient(timeout=timeout)
        self._attempts = attempts
        self._on_result = on_result

    async def __call__(self, url: str, body: dict[str, Any]) -> bool:
        ok = False
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
            try:
                r = await self._client.post(url, json=body)
            except self._httpx.HTTPError as exc:
                log.warning("alert webhook failed: %s", type(exc).__name__)
                continue
            if r.status_code < 300:
                ok = True
                break
            log.warning("alert webhook answered %d", r.status_code)
        if self._on_result is not None:
            self._on_result(ok)
        return ok

    async def aclose(self) -> None:
        await self._client.aclose()
