"""Errors raised by :mod:`index`."""
from __future__ import annotations


class IndexError_(Exception):
    """Root of every error raised by ``index`` (named so it never shadows the builtin)."""

    retriable = False


class CatalogError(IndexError_, ValueError):
    """A catalogue file or product record that cannot be read."""


class SnapshotError(IndexError_):
    """A snapshot that is missing, corrupt, or built for another model or dimension."""


class UnknownProductError(IndexError_, KeyError):
    """A product id the index does not hold."""
