"""portwatch: name every flow by the IANA service registry, flag the rest.

The public API is what this module exports (``__all__``); everything else is
internal and may change. Names are imported on first use, so ``import
portwatch`` stays cheap (numpy and the registry load only when needed)::

    import portwatch
    table = portwatch.open_table()                   # the default registry
    analyzer = portwatch.Analyzer(table)
    with portwatch.read_capture("capture.pcapng") as reader:
        for batch in reader:
            analyzer.feed(batch)
    report = analyzer.report()
    sniff(prn=portwatch.annotate)                    # scapy; pyshark packets too
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> (module, attribute); ``annotate`` is the callable module itself
_PUBLIC: dict[str, tuple[str, str | None]] = {
    "annotate": ("portwatch.annotate", None),
    "Annotation": ("portwatch.annotate", "Annotation"),
    "Annotator": ("portwatch.annotate", "Annotator"),
    "open_table": ("portwatch.porttable", "open_table"),
    "PortTable": ("portwatch.porttable", "PortTable"),
    "PortInfo": ("portwatch.porttable", "PortInfo"),
    "read_capture": ("portwatch.capture.files.reader", "read_capture_path"),
    "Analyzer": ("portwatch.analysis.analyzer", "Analyzer"),
    "Report": ("portwatch.analysis.report", "Report"),
    "Transport": ("portwatch.ports", "Transport"),
    "PortStatus": ("portwatch.ports", "PortStatus"),
    "PYSHARK_PREFS": ("portwatch.decode.pyshark", "OVERRIDE_PREFS"),
    "PortwatchError": ("portwatch.errors", "PortwatchError"),
    "UsageError": ("portwatch.errors", "UsageError"),
    "ConfigError": ("portwatch.errors", "ConfigError"),
    "RegistryError": ("portwatch.errors", "RegistryError"),
    "RegistryFormatError": ("portwatch.errors", "RegistryFormatError"),
    "RegistryRowError": ("portwatch.errors", "RegistryRowError"),
    "CaptureError": ("portwatch.errors", "CaptureError"),
    "CaptureFormatError": ("portwatch.errors", "CaptureFormatError"),
    "CaptureTruncatedError": ("portwatch.errors", "CaptureTruncatedError"),
    "BackendError": ("portwatch.errors", "BackendError"),
}

__all__ = [
    "PYSHARK_PREFS",
    "Analyzer",
    "Annotation",
    "Annotator",
    "BackendError",
    "CaptureError",
    "CaptureFormatError",
    "CaptureTruncatedError",
    "ConfigError",
    "PortInfo",
    "PortStatus",
    "PortTable",
    "PortwatchError",
    "RegistryError",
    "RegistryFormatError",
    "RegistryRowError",
    "Report",
    "Transport",
    "UsageError",
    "__version__",
    "annotate",
    "open_table",
    "read_capture",
]

if TYPE_CHECKING:
    from portwatch import annotate as annotate
    from portwatch.analysis.analyzer import Analyzer as Analyzer
    from portwatch.analysis.report import Report as Report
    from portwatch.annotate import Annotation as Annotation
    from portwatch.annotate import Annotator as Annotator
    from portwatch.capture.files.reader import read_capture_path as read_capture
    from portwatch.decode.pyshark import OVERRIDE_PREFS as PYSHARK_PREFS
    from portwatch.errors import BackendError as BackendError
    from portwatch.errors import CaptureError as CaptureError
    from portwatch.errors import CaptureFormatError as CaptureFormatError
    from portwatch.errors import CaptureTruncatedError as CaptureTruncatedError
    from portwatch.errors import ConfigError as ConfigError
    from portwatch.errors import PortwatchError as PortwatchError
    from portwatch.errors import RegistryError as RegistryError
    from portwatch.errors import RegistryFormatError as RegistryFormatError
    from portwatch.errors import RegistryRowError as RegistryRowError
    from portwatch.errors import UsageError as UsageError
    from portwatch.ports import PortStatus as PortStatus
    from portwatch.ports import Transport as Transport
    from portwatch.porttable import PortInfo as PortInfo
    from portwatch.porttable import PortTable as PortTable
    from portwatch.porttable import open_table as open_table


def __getattr__(name: str) -> object:
    """Import a public name on first use (PEP 562)."""
    try:
        module, attribute = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    loaded = importlib.import_module(module)
    value = loaded if attribute is None else getattr(loaded, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
