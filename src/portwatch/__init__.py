"""portwatch: name every flow by the IANA service registry, flag the rest."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``portwatch.annotate(packet)``: imported on first use, with numpy and the registry."""
    if name == "annotate":
        import importlib

        return importlib.import_module(".annotate", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
