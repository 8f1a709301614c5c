"""Alembic environment: migrations always run on the connection ``Store.start`` passes in."""

from __future__ import annotations

from alembic import context

import inferno.store.batch  # (its tables join the metadata)
import inferno.store.governator  # noqa: F401  (its tables join the metadata)
from inferno.store.models import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
