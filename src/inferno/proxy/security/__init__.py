"""The gateway's security and accounting: who is calling, may they, how much, and a record.

``Security`` (setup.py) builds everything from :class:`ProxySettings`; the proxy calls one
object per request, :class:`RequestGuard` (guard.py): authenticate -> validate -> rate-limit
admission -> cache lookup -> forward -> settle, cache store and one request-log row.
Nothing on that path waits on the database: keys are served from an in-memory snapshot
refreshed in the background, and log rows go through a bounded queue.
"""
