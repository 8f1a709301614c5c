"""Alembic migrations for :mod:`inferno.store`, applied by ``Store.start``."""
