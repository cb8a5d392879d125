"""Replay the fuzz corpus through the compiled-vs-numpy framing harness, then fuzz briefly.

``fuzz_core.one_input`` reads each input with both framings (buffer and
stream, small batches) and requires identical batches and errors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_captures import CORPUS, fuzz
from fuzz_core import READS, one_input

from portwatch.capture.files.reader import COMPILED

pytestmark = pytest.mark.skipif(not COMPILED, reason="the compiled framing is not built")


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.iterdir() if p.is_file()))
def test_corpus_input_frames_alike_compiled_and_numpy(name: str) -> None:
    assert one_input((CORPUS / name).read_bytes()) == len(READS)


def test_a_difference_between_the_framings_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from portwatch.capture.files import _compiled

    monkeypatch.setattr(_compiled, "_message", lambda *_: "another message")
    with pytest.raises(AssertionError, match="framings differ"):
        one_input((CORPUS / "hostile-block-4gib.pcapng").read_bytes())


@pytest.mark.parametrize("seed", [0, 1])
def test_seeded_mutation_fuzz_of_the_compiled_framing_finds_nothing(seed: int) -> None:
    done, failures = fuzz(runs=400, seconds=None, seed=seed, target=one_input)
    assert done == 400
    assert not failures, failures[0][1]
