"""Whether nDPI (nfstream) is installed here, and the mark that skips without it."""

from __future__ import annotations

import pytest

from portwatch.analysis.detect import require_ndpi
from portwatch.errors import UsageError

try:
    require_ndpi()
    HAVE_NDPI = True
except UsageError:  # nfstream is missing: --detect would exit 2 with the install hint
    HAVE_NDPI = False

needs_ndpi = pytest.mark.skipif(not HAVE_NDPI, reason="nfstream (nDPI) is not installed: "
                                "pip install 'portwatch[detect]'")
