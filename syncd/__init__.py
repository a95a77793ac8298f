"""syncd: keeps a local SQLite mirror of the Pet Store API consistent."""

__version__ = "0.1.0"
