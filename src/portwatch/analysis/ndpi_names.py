"""Which IANA service names each nDPI protocol confirms, read from ``data/ndpi_to_iana.tsv``.

nDPI names what it reads in a payload (``SSH``, ``TLS``, ``DNS``); the
registry names what a port is assigned to (``ssh``, ``https``, ``domain``).
The table between the two is data kept in the repository, so a reviewer sees
every pairing and the tests check both columns: each nDPI name against
nDPI's own protocol list, each IANA name against the packaged registry.
Pure: no nDPI needed to read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources

__all__ = ["TABLE_FILE", "confirms", "iana_names_of", "packaged_table", "parse_table"]

TABLE_FILE = "ndpi_to_iana.tsv"


def parse_table(lines: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``nDPI name -> IANA names``, as spelt in the file; ``#`` starts a comment line.

    A malformed line is a ``ValueError`` naming its line number: the file ships
    with the package, so a bad one is a bug to fail on, not to skip.
    """
    table: dict[str, tuple[str, ...]] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        ndpi, sep, iana = line.partition("\t")
        names = tuple(iana.split())
        if not sep or not ndpi or not names or "\t" in iana:
            raise ValueError(f"{TABLE_FILE}:{number}: expected 'nDPI name<TAB>IANA names', "
                             f"found {line!r}")
        if ndpi in table:
            raise ValueError(f"{TABLE_FILE}:{number}: {ndpi!r} is listed twice")
        table[ndpi] = names
    return table


@cache
def _packaged() -> dict[str, tuple[str, ...]]:
    text = (resources.files("portwatch.analysis") / "data" / TABLE_FILE).read_text("utf-8")
    return parse_table(text.splitlines())


@cache
def _lowered() -> Mapping[str, frozenset[str]]:
    return {k.lower(): frozenset(n.lower() for n in v) for k, v in _packaged().items()}


def iana_names_of(ndpi_name: str) -> tuple[str, ...]:
    """The IANA names ``ndpi_name`` (any case) confirms; empty when it is not in the table."""
    for key, names in _packaged().items():
        if key.lower() == ndpi_name.lower():
            return names
    return ()


def packaged_table() -> dict[str, tuple[str, ...]]:
    """The whole shipped table (a copy)."""
    return dict(_packaged())


def confirms(detected: str, service: str, aliases: Iterable[str]) -> bool:
    """Whether nDPI's ``detected`` (``SSH``, ``TLS.Google``) is the service or one of its aliases.

    Each dotted part of nDPI's ``master.app`` name counts: ``TLS.Google`` on
    tcp/443 is confirmed by ``TLS``.
    """
    assigned = {n.lower() for n in (service, *aliases) if n}
    if not assigned:
        return False
    table = _lowered()
    return any(not assigned.isdisjoint(table.get(part, ())) for part in
               detected.lower().split("."))

