"""Parser for the text/Markdown renderings of the IANA registry page.

These renderings (copied from the HTML page by various tools) keep the
table's rows but not its geometry: runs of empty cells are collapsed and
re-padded at the end of the row, so a cell's position says little about its
column (``8794-8799 | Unassigned | ||||||||||`` has the port in the first
cell). Long rows are sometimes broken over two lines, and the people table
that follows the services table shifts its cells the same way.

So cells are never read by position. The non-empty cells of a row are
assigned to the header's columns by *content*, with a monotone alignment
(cells keep their order, each column takes at most one cell) that maximises
a score of how well each cell fits its column's shape. The dynamic
programme is tiny (at most a dozen cells by a dozen columns).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import Enum

from portwatch.errors import RegistryFormatError
from portwatch.ports import Transport
from portwatch.registry.formats._fields import (
    DATE_RE,
    MAX_PROBLEMS,
    port_range_or_none,
    shorten,
    too_many_problems,
)
from portwatch.registry.formats.contacts import repair_contact_uri
from portwatch.registry.formats.iana_csv import split_bracketed
from portwatch.registry.model import (
    ParsedSource,
    ParseProblem,
    Person,
    Provenance,
    ServiceRecord,
    SourceFormat,
    SourceInfo,
    classify_description,
    parse_registry_date,
)

__all__ = ["Column", "align_cells", "looks_like_text_table", "parse_text_table"]


class Column(Enum):
    """Columns of the two tables of the registry page, by header label."""

    NAME = "service name"
    PORT = "port number"
    TRANSPORT = "transport protocol"
    DESCRIPTION = "description"
    ASSIGNEE = "assignee"
    CONTACT = "contact"
    REGISTERED = "registration date"
    MODIFIED = "modification date"
    REFERENCE = "reference"
    SERVICE_CODE = "service code"
    UNAUTHORIZED = "unauthorized use reported"
    NOTES = "assignment notes"
    PERSON_ID = "id"
    PERSON_NAME = "name"
    ORGANIZATION = "organization"
    URI = "contact uri"
    UPDATED = "last updated"


class TableKind(Enum):
    SERVICES = "services"
    PEOPLE = "people"


_TITLE = "service name and transport protocol port number registry"
_SEPARATOR_RE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+*/-]*$")
_BRACKETS_RE = re.compile(r"^(?:\[[^\[\]]+\])+$")
_REFERENCE_ITEM_RE = re.compile(r"^(?:RFC|draft-|https?://|ISO|TR-|\d)|\s")
_URI_RE = re.compile(r"^(?:mailto:|https?://)\S+$", re.I)
_UNAUTHORIZED_RE = re.compile(r"unauthori[sz]ed|unofficial", re.I)
_BULLET_RE = re.compile(r"^[\s*#>+-]*(.*?)[\s*#]*$")
_LAST_UPDATED_RE = re.compile(r"^last updated\s*:?\s*(.*)$", re.I)
#: A cell boundary; Markdown writes a pipe inside a cell as ``\|``.
_PIPE_RE = re.compile(r"(?<!\\)\|")
_ENDS_WITH_PIPE_RE = re.compile(r"(?<!\\)\|\s*$")
_TRANSPORTS = frozenset(t.label for t in Transport)
#: Words that mark a contact's lone text cell as an organisation, not a
#: person (``The Chair for Process Control Engineering``, ``Cisco Systems``).
_ORGANIZATION_RE = re.compile(
    r"\b(?:inc|ltd|llc|gmbh|corp|corporation|company|ag|plc|limited|systems|technologies|"
    r"software|networks|project|university|institute|foundation|group|consortium|forum|"
    r"association|alliance|chair|engineering|laborator(?:y|ies)|labs|solutions|team|"
    r"committee|council|organi[sz]ation|communications|international|iesg|iab|iana)\b",
    re.I,
)


# --- cell shapes -----------------------------------------------------------


_port_range = port_range_or_none


def _is_name(cell: str) -> bool:
    return bool(_NAME_RE.match(cell)) and _port_range(cell) is None


def _is_brackets(cell: str) -> bool:
    return bool(_BRACKETS_RE.match(cell))


def _is_id_list(cell: str) -> bool:
    """``[Mark_Lottor][IESG]``: person ids never hold spaces or look like references."""
    return _is_brackets(cell) and not any(
        _REFERENCE_ITEM_RE.search(item) for item in split_bracketed(cell)
    )


def _is_reference_like(cell: str) -> bool:
    return _is_brackets(cell) and any(
        _REFERENCE_ITEM_RE.search(item) for item in split_bracketed(cell)
    )


def _is_date(cell: str) -> bool:
    return bool(DATE_RE.match(cell))


def _is_free_text(cell: str) -> bool:
    """Prose: anything that is not a bracket list or a bare date."""
    return not _is_brackets(cell) and not _is_date(cell)


def _contact_text_score(cell: str, *, organization: bool) -> float | None:
    """A lone text cell is a person's name unless it reads like an organisation."""
    if not _is_free_text(cell):
        return None
    org_like = bool(_ORGANIZATION_RE.search(cell))
    if organization:
        return 4.0 if org_like else 1.0
    return 0.5 if org_like else 3.0


Scorer = Callable[[str], float | None]


def _when(test: Callable[[str], bool], score: float) -> Scorer:
    return lambda cell: score if test(cell) else None


def _reference_score(cell: str) -> float | None:
    if _is_reference_like(cell):
        return 5.0
    return 2.0 if _is_brackets(cell) else None


def _unauthorized_score(cell: str) -> float | None:
    if not _is_free_text(cell):
        return None
    return 4.0 if _UNAUTHORIZED_RE.search(cell) else 0.5


#: How well a cell fits each column; ``None`` means it cannot go there. The
#: description weighs most because every row has one whenever it has prose.
_SCORERS: dict[Column, Scorer] = {
    Column.NAME: _when(_is_name, 3.0),
    Column.PORT: _when(lambda c: _port_range(c) is not None, 6.0),
    Column.TRANSPORT: _when(lambda c: c.lower() in _TRANSPORTS, 6.0),
    Column.DESCRIPTION: _when(_is_free_text, 10.0),
    Column.ASSIGNEE: _when(_is_id_list, 3.0),
    Column.CONTACT: _when(_is_id_list, 3.0),
    Column.REGISTERED: _when(_is_date, 4.0),
    Column.MODIFIED: _when(_is_date, 4.0),
    Column.REFERENCE: _reference_score,
    Column.SERVICE_CODE: _when(lambda c: c.isascii() and c.isdigit(), 2.0),
    Column.UNAUTHORIZED: _unauthorized_score,
    Column.NOTES: _when(_is_free_text, 1.0),
    Column.PERSON_ID: _when(_is_brackets, 6.0),
    Column.PERSON_NAME: lambda c: _contact_text_score(c, organization=False),
    Column.ORGANIZATION: lambda c: _contact_text_score(c, organization=True),
    Column.URI: lambda c: 6.0 if _URI_RE.match(c) else (0.5 if _is_free_text(c) else None),
    Column.UPDATED: _when(_is_date, 4.0),
}

#: Among equally good alignments, prefer earlier columns (a lone date is the
#: registration date, a lone id the assignee).
_EARLY_BONUS = 1e-3


def align_cells(cells: Sequence[str], columns: Sequence[Column]) -> dict[Column, str] | None:
    """Assign each non-empty cell to a column, in order, maximising fit.

    Returns ``None`` when no monotone assignment places every cell.
    """
    n, m = len(cells), len(columns)
    neg = float("-inf")
    # best[i][j]: best score placing cells[i:] into columns[j:]
    best = [[neg] * (m + 1) for _ in range(n + 1)]
    for j in range(m + 1):
        best[n][j] = 0.0
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            skip = best[i][j + 1]
            fit = _SCORERS[columns[j]](cells[i])
            take = neg
            if fit is not None and best[i + 1][j + 1] > neg:
                take = fit + _EARLY_BONUS * (m - j) + best[i + 1][j + 1]
            best[i][j] = max(skip, take)
    if best[0][0] == neg:
        return None
    out: dict[Column, str] = {}
    i = j = 0
    while i < n:
        fit = _SCORERS[columns[j]](cells[i])
        if fit is not None and best[i + 1][j + 1] > neg:
            take = fit + _EARLY_BONUS * (m - j) + best[i + 1][j + 1]
            if take >= best[i][j + 1]:
                out[columns[j]] = cells[i]
                i += 1
        j += 1
    return out


# --- lines and rows ----------------------------------------------------------


def _split_cells(text: str) -> list[str]:
    """Non-empty cells of a (possibly multi-line) row, in order."""
    cells = (cell.strip().replace("\\|", "|") for cell in _PIPE_RE.split(text))
    return [cell for cell in cells if cell]


def _pipes(text: str) -> int:
    """Cell boundaries in ``text`` (escaped pipes are content)."""
    return len(_PIPE_RE.findall(text))


def _first_cell(line: str) -> str:
    cells = _split_cells(line)
    return cells[0] if cells else ""


def _is_row_start(line: str) -> bool:
    """Every registry row begins with its service name or its port."""
    first = _first_cell(line)
    return _port_range(first) is not None or _is_name(first)


def _header_columns(line: str) -> list[Column] | None:
    labels = [cell.lower() for cell in _split_cells(line)]
    by_label = {c.value: c for c in Column}
    if not labels or any(label not in by_label for label in labels):
        return None
    return [by_label[label] for label in labels]


def _table_kind(columns: Sequence[Column]) -> TableKind | None:
    if Column.NAME in columns and Column.PORT in columns:
        return TableKind.SERVICES
    if Column.PERSON_ID in columns and Column.URI in columns:
        return TableKind.PEOPLE
    return None


@dataclass(frozen=True, slots=True)
class _Table:
    kind: TableKind | None
    columns: tuple[Column, ...]
    pipes: int  # pipes in a full row, as in the header
    outer: bool  # rows written ``| a | b |`` rather than ``a | b |``
    trailing: bool  # rows end with a pipe, so a row without one was cut mid-cell


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    text: str


def _is_header_at(lines: Sequence[str], i: int) -> bool:
    return _pipes(lines[i]) > 0 and i + 1 < len(lines) and bool(_SEPARATOR_RE.match(lines[i + 1]))


def _continues(table: _Table, pending: str, lines: Sequence[str], k: int) -> bool:
    """Whether line ``k`` is the rest of the row in ``pending``.

    A row broken mid-cell continues whatever follows; a row broken between
    cells continues only with a line of further cells that does not push the
    pipe count past the header's and does not itself start a row (unless it
    exactly completes the count). A short final row thus never swallows the
    heading after it. Tables whose rows do not end with a pipe give no
    such evidence, so their rows are never joined.
    """
    line = lines[k]
    if not table.trailing:
        return False
    if not line.strip() or _SEPARATOR_RE.match(line) or _is_header_at(lines, k):
        return False
    have = _pipes(pending)
    if have >= table.pipes:
        return False
    extra = _pipes(line) - (1 if table.outer and line.lstrip().startswith("|") else 0)
    if not _ENDS_WITH_PIPE_RE.search(pending):
        heading = _pipes(line) == 0 and (k + 1 >= len(lines) or _is_header_at(lines, k + 1))
        return not heading and have + extra <= table.pipes
    if _pipes(line) == 0 or have + extra > table.pipes:
        return False
    return have + extra == table.pipes or not _is_row_start(line)


# --- records -------------------------------------------------------------------


def _service_record(
    cells: dict[Column, str], path: str, line: int, last_updated: date | None
) -> ServiceRecord:
    ports = _port_range(cells.get(Column.PORT, ""))
    transport = cells.get(Column.TRANSPORT, "")
    name = cells.get(Column.NAME, "")
    description = cells.get(Column.DESCRIPTION, "")
    return ServiceRecord(
        name=name,
        port_low=ports[0] if ports else None,
        port_high=ports[1] if ports else None,
        transport=Transport.parse(transport) if transport else None,
        description=description,
        kind=classify_description(name, ports is not None, description),
        provenance=Provenance(path, line, last_updated),
        assignees=split_bracketed(cells.get(Column.ASSIGNEE, "")),
        contacts=split_bracketed(cells.get(Column.CONTACT, "")),
        registered=cells.get(Column.REGISTERED, ""),
        modified=cells.get(Column.MODIFIED, ""),
        references=split_bracketed(cells.get(Column.REFERENCE, "")),
        service_code=cells.get(Column.SERVICE_CODE, ""),
        unauthorized_use=cells.get(Column.UNAUTHORIZED, ""),
        notes=cells.get(Column.NOTES, ""),
    )


def _person(cells: dict[Column, str]) -> Person:
    ids = split_bracketed(cells[Column.PERSON_ID])
    return Person(
        id=ids[0] if ids else "",
        name=cells.get(Column.PERSON_NAME, ""),
        organization=cells.get(Column.ORGANIZATION, ""),
        uri=repair_contact_uri(cells.get(Column.URI, "")),
        updated=cells.get(Column.UPDATED, ""),
    )


def _shorten(text: str) -> str:
    return shorten(text, 60)


# --- the page --------------------------------------------------------------------


def _plain(line: str) -> str:
    """A header line without its list bullet or Markdown emphasis."""
    m = _BULLET_RE.match(line)
    return m[1].strip() if m else line.strip()


def _last_updated(
    lines: Sequence[str], stop: int, path: str, problems: list[ParseProblem]
) -> date | None:
    """The page's ``Last Updated`` item: on its own line, or on the next one."""
    for i in range(stop):
        m = _LAST_UPDATED_RE.match(_plain(lines[i]))
        if not m:
            continue
        value, at = m[1].strip(), i
        if not value:
            at = next((k for k in range(i + 1, stop) if _plain(lines[k])), i)
            value = _plain(lines[at]) if at != i else ""
        when = parse_registry_date(value)
        if when is None:
            problems.append(
                ParseProblem(path, at + 1, f"Last Updated is not a date: {_shorten(value)!r}")
            )
        return when
    return None


def looks_like_text_table(head: str) -> bool:
    """A rendering of the registry page: its title line, or its table header."""
    lines = head.splitlines()
    if any(_plain(line).lower() == _TITLE for line in lines):
        return True
    return any(
        _pipes(line) > 0 and _table_kind(_header_columns(line) or []) is TableKind.SERVICES
        for line in lines
    )


def _rows(lines: Sequence[str], start: int, table: _Table) -> tuple[list[_Row], int]:
    """The (joined) rows of the table whose first row is at ``start``; and where it ends."""
    rows: list[_Row] = []
    k = start
    while k < len(lines):
        line = lines[k]
        if not line.strip():
            k += 1
            continue
        if _pipes(line) == 0 or _is_header_at(lines, k):
            break
        text, first = line, k
        k += 1
        while k < len(lines) and _continues(table, text, lines, k):
            text += "\n" + lines[k]
            k += 1
        rows.append(_Row(first + 1, text))
    return rows, k


def parse_text_table(text: str, path: str) -> ParsedSource:
    """Records and people from a text/Markdown rendering of the registry page.

    Rows that cannot be understood become ``ParseProblem``\\ s; text with no
    services table at all raises ``RegistryFormatError``.
    """
    # Newlines only: a stray U+2028 or form feed inside a cell is no row break.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    headers = [i for i in range(len(lines)) if _is_header_at(lines, i)]
    tables = {i: _header_columns(lines[i]) for i in headers}
    if not any(_table_kind(cols or []) is TableKind.SERVICES for cols in tables.values()):
        raise RegistryFormatError(
            "no registry table found: expected a header row naming 'Service Name' and "
            "'Port Number' followed by a '---|---' separator row",
            path=path,
            line=1,
        )
    problems: list[ParseProblem] = []
    last_updated = _last_updated(lines, headers[0], path, problems)
    result = ParsedSource(SourceInfo(path, SourceFormat.TEXT_TABLE, last_updated))
    k = headers[0]
    while k < len(lines):
        if len(problems) + len(result.problems) >= MAX_PROBLEMS:
            raise too_many_problems(path, k + 1, "a rendering of the IANA registry page")
        if not _is_header_at(lines, k):
            if _pipes(lines[k]) > 0:
                problems.append(
                    ParseProblem(
                        path, k + 1, f"table row outside any table: {_shorten(lines[k])!r}"
                    )
                )
            k += 1
            continue
        columns = tables[k] or []
        header = lines[k]
        table = _Table(
            kind=_table_kind(columns),
            columns=tuple(columns),
            pipes=_pipes(header),
            outer=header.lstrip().startswith("|"),
            trailing=bool(_ENDS_WITH_PIPE_RE.search(header)),
        )
        if table.kind is None:
            problems.append(
                ParseProblem(path, k + 1, f"unknown table header: {_shorten(header)!r}")
            )
        rows, k = _rows(lines, k + 2, table)
        if table.kind is not None:
            for row in rows:
                _load_row(table, row, path, result)
    result.problems[:0] = problems
    result.problems.sort(key=lambda p: p.line)
    return result


def _load_row(table: _Table, row: _Row, path: str, result: ParsedSource) -> None:
    cells = _split_cells(row.text)
    aligned = align_cells(cells, table.columns)
    if aligned is None:
        result.problems.append(
            ParseProblem(
                path, row.line, f"cells do not fit the table's columns: {_shorten(row.text)!r}"
            )
        )
        return
    if table.kind is TableKind.PEOPLE:
        if Column.PERSON_ID not in aligned:
            result.problems.append(
                ParseProblem(path, row.line, f"contact row without an [ID]: {_shorten(row.text)!r}")
            )
            return
        person = _person(aligned)
        result.people[person.id] = person
        return
    if Column.NAME not in aligned and Column.PORT not in aligned:
        result.problems.append(
            ParseProblem(
                path, row.line, f"row has neither service name nor port: {_shorten(row.text)!r}"
            )
        )
        return
    result.records.append(_service_record(aligned, path, row.line, result.info.last_updated))
