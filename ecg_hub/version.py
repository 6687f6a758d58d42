"""The ecg-hub version, in a module of its own so that submodules can read it without importing
the top-level package (whose ``__init__`` registers models and pipelines)."""

__version__ = "0.1.0"
