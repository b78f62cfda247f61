"""The package version (one place; robench/__init__ re-exports it)."""

__version__ = "0.1.0"
