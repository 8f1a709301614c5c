"""Alembic environment: migrations always run on the connection ``Store.start`` passes in."""

from __future__ import annotations

from alembic import context

from inferno.store import audit, batch, governator  # noqa: F401  (their tables join the metadata)
from inferno.store.models import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
