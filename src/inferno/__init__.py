"""Inferno: a self-healing cloud for AI inference."""

__version__ = "0.1.0"
