"""Engines that dissect captures with another library: scapy or tshark (pyshark).

The native engine (``portwatch.capture`` + ``Analyzer.feed``) is the fast one;
these are independent cross-checks of it and read what only their library
reads. Each engine module provides::

    iter_decoded(path, batch_size=4096) -> Iterator[(DecodedBatch, timestamps_ns)]

for ``Analyzer.feed_decoded``. Nothing here imports scapy or pyshark until an
engine is used, so ``import portwatch`` stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from portwatch.decode.native import DecodedBatch
from portwatch.errors import UsageError

__all__ = ["DISSECTING_ENGINES", "ENGINES", "IterDecoded", "decoder_for"]

IterDecoded = Callable[[str, int], Iterator[tuple[DecodedBatch, npt.NDArray[np.int64]]]]

#: Every engine ``--engine`` accepts; ``native`` is the built-in numpy decoder.
ENGINES = ("native", "scapy", "pyshark")
#: Engines whose library dissects the packets: name -> module.
DISSECTING_ENGINES = {
    "scapy": "portwatch.decode.scapy",
    "pyshark": "portwatch.decode.pyshark",
}


def decoder_for(name: str) -> IterDecoded:
    """``iter_decoded`` of a dissecting engine; imports its module (not yet its library)."""
    module = DISSECTING_ENGINES.get(name)
    if module is None:
        choices = ", ".join(DISSECTING_ENGINES)
        raise UsageError(f"no dissecting engine {name!r}: expected one of {choices}")
    iter_decoded: IterDecoded = importlib.import_module(module).iter_decoded
    return iter_decoded
