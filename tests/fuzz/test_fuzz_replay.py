"""Replay the fuzz corpus, then run a short seeded mutation fuzz of the capture readers.

Only ``CaptureError`` may come out of reading any input; the annotated copy of
whatever was read must read back the same (``fuzz_captures.one_input``).
Inputs are bounded in size (64 KiB), which bounds the time of each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_captures import CORPUS, MAX_INPUT, fuzz, mutate, one_input, seeds

from portwatch.capture.files.reader import read_capture_path
from portwatch.errors import CaptureError

CORPUS_FILES = sorted(p.name for p in CORPUS.iterdir() if p.is_file())


def test_the_corpus_is_small_and_holds_both_formats() -> None:
    assert len(CORPUS_FILES) >= 10
    assert all((CORPUS / n).stat().st_size < 2048 for n in CORPUS_FILES)
    assert {n.rsplit(".", 1)[-1] for n in CORPUS_FILES} >= {"pcap", "pcapng", "gz"}


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_input_reads_copies_and_reads_back(name: str) -> None:
    one_input((CORPUS / name).read_bytes())


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_input_read_by_path_raises_only_capture_errors(name: str) -> None:
    error: CaptureError | None = None
    try:
        with read_capture_path(str(CORPUS / name), batch_size=3) as reader:
            for batch in reader:
                assert len(batch) <= 3
    except CaptureError as exc:
        error = exc
    assert error is None or error.path == str(CORPUS / name)


def test_hostile_seeds_are_damage_not_crashes() -> None:
    for name in ("hostile-block-4gib.pcapng", "hostile-late-timestamp.pcapng"):
        with pytest.raises(CaptureError, match=r"byte \d+"), read_capture_path(
                str(CORPUS / name)) as reader:
            list(reader)


def test_mutations_stay_within_the_input_bound() -> None:
    import random

    rng = random.Random(7)
    pool = seeds()
    for _ in range(200):
        assert len(mutate(rng.choice(pool) * 100, rng, pool)) <= MAX_INPUT


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seeded_mutation_fuzz_finds_nothing(seed: int) -> None:
    done, failures = fuzz(runs=1500, seconds=None, seed=seed)
    assert done == 1500
    assert not failures, failures[0][1]
