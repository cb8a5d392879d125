"""The official IANA XML form of the service-names/port-numbers registry.

The XML is the registry's master form: it is newer than any CSV export and
carries the people list (names, organisations, contact URIs) the CSV lacks.
Parsing uses expat directly so that each ``<record>`` keeps the line it
starts on, and records are converted as soon as they close so the whole
document never sits in memory as a tree.

Text is rendered the way IANA's own CSV export renders it: inline ``<xref>``
elements become ``[RFC9483]``-style brackets and whitespace runs collapse to
one space.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date
from typing import NoReturn
from xml.parsers import expat

from portwatch.errors import RegistryFormatError
from portwatch.registry.formats._fields import MAX_PROBLEMS, too_many_problems
from portwatch.registry.formats.contacts import repair_contact_uri
from portwatch.registry.formats.iana_csv import newest_date, parse_port_text, parse_transport_text
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

__all__ = ["MAX_DEPTH", "MAX_HELD_NODES", "REGISTRY_ID", "looks_like_iana_xml", "parse_iana_xml"]

REGISTRY_ID = "service-names-port-numbers"

_REGISTRY_TAG_RE = re.compile(
    rb"<(?:[\w.-]+:)?registry\b[^>]*\bid\s*=\s*[\"']" + REGISTRY_ID.encode() + rb"[\"']"
)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_BLOCKS = frozenset({"br", "paragraph"})  # elements that separate text like a line break
#: Elements whose own text (the layout between their children) nothing reads.
_LAYOUT_ONLY = frozenset({"people", "person", "record"})
#: The official XML nests 5 deep (registry, record, description, paragraph,
#: xref). Rendering recurses, so a document thousands deep is refused.
MAX_DEPTH = 32
#: Elements and text runs held at once (one record or person is being
#: built; the largest official one has under 100). Bounds memory for a
#: hostile ``<record>`` with millions of children.
MAX_HELD_NODES = 100_000


def looks_like_iana_xml(head: bytes) -> bool:
    """True when ``head`` (the first few KiB of a file) opens the service-names registry."""
    if head.startswith(_UTF16_BOMS):
        head = head.decode("utf-16", errors="ignore").encode("utf-8")
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return text.startswith(b"<") and _REGISTRY_TAG_RE.search(text) is not None


@dataclass(slots=True)
class _Node:
    """A parsed element: enough of a tree for one ``<record>`` or ``<person>``."""

    tag: str
    attrs: dict[str, str]
    line: int
    children: list[_Node | str] = field(default_factory=list)
    #: Child elements by tag, built on first use (once the element has closed):
    #: a record is asked for a dozen tags, and scanning its children for each
    #: was a third of the parse.
    by_tag: dict[str, list[_Node]] | None = None

    def index(self) -> dict[str, list[_Node]]:
        """Child elements by tag, in document order."""
        index = self.by_tag
        if index is None:
            index = self.by_tag = {}
            for c in self.children:
                if not isinstance(c, str):
                    index.setdefault(c.tag, []).append(c)
        return index

    def elements(self, tag: str) -> list[_Node]:
        return self.index().get(tag, _NONE)

    def first(self, tag: str) -> _Node | None:
        found = self.elements(tag)
        return found[0] if found else None

    def raw_text(self) -> str:
        """All character data, nested elements included, untouched."""
        return "".join(c if isinstance(c, str) else c.raw_text() for c in self.children)

    def rendered(self) -> str:
        """Mixed content as IANA's CSV export shows it: xrefs bracketed, spaces collapsed."""
        children = self.children
        if len(children) == 1 and type(children[0]) is str:  # most elements: plain text
            return _collapse(children[0])
        return _collapse(self._render())

    def _render(self) -> str:
        parts: list[str] = []
        for child in self.children:
            if isinstance(child, str):
                parts.append(child)
            elif child.tag == "xref":
                parts.append(f"[{_xref_label(child)}]")
            elif child.tag in _BLOCKS:
                parts.extend(("\n", child._render(), "\n"))
            else:
                parts.append(child._render())
        return "".join(parts)


_NONE: list[_Node] = []


def _collapse(text: str) -> str:
    """Whitespace runs as one space, ends stripped (``str.split`` and ``\\s`` agree on
    what whitespace is; this is several times faster than a regex substitution)."""
    return " ".join(text.split())


def _xref_label(xref: _Node) -> str:
    """``<xref type="rfc" data="rfc9483"/>`` -> ``RFC9483``; the bracket text of any xref.

    rfc, uri and text: the element's own text when it has some
    (``TR-352``, ``RFC8765, Section 6.1``), else the RFC number in upper case
    or the URI; draft, person and note: their data.
    """
    kind = xref.attrs.get("type", "")
    data = xref.attrs.get("data", "").strip()
    text = _collapse(xref.raw_text())
    if kind == "rfc":
        return text or data.upper()
    if kind in ("uri", "text"):
        return text or data
    return data or text


def _text_of(record: _Node, tag: str) -> str:
    node = record.first(tag)
    return "" if node is None else node.rendered()


def _persons(node: _Node | None) -> tuple[str, ...]:
    if node is None:
        return ()
    ids = (x.attrs.get("data", "").strip() or _collapse(x.raw_text())
           for x in node.elements("xref") if x.attrs.get("type") == "person")
    return tuple(i for i in ids if i)


def _record(node: _Node, path: str, last_updated: date | None) -> ServiceRecord:
    """One ``<record>`` -> a record; ``ValueError`` says what is wrong with it.

    Record-level ``<xref type="person">`` elements are the contacts; an
    explicit ``<assignee>`` names the assignee, and without one the contact
    is the assignee too (as IANA's CSV export has it). Other record-level
    xrefs are the references.
    """
    index = node.index()

    def text(tag: str) -> str:
        found = index.get(tag)
        return found[0].rendered() if found else ""

    name = _collapse(text("name"))
    port_low, port_high = parse_port_text(text("number"))
    transport = parse_transport_text(text("protocol"))
    description = text("description")
    xrefs = index.get("xref", _NONE)
    contact = index.get("contact")
    contacts = _persons(node) if xrefs else ()
    if contact:
        contacts += _persons(contact[0])
    assignee = index.get("assignee")
    assignees = contacts if not assignee else _persons(assignee[0])
    references = tuple(
        label for x in xrefs if x.attrs.get("type") != "person" and (label := _xref_label(x))
    )
    notes = index.get("note", _NONE)
    return ServiceRecord(
        name=name,
        port_low=port_low,
        port_high=port_high,
        transport=transport,
        description=description,
        kind=classify_description(name, port_low is not None, description),
        provenance=Provenance(path, node.line, last_updated),
        assignees=assignees,
        contacts=contacts,
        registered=node.attrs.get("date", "").strip(),
        modified=node.attrs.get("updated", "").strip(),
        references=references,
        service_code=text("sc"),
        unauthorized_use=text("unauthorized"),
        notes=" ".join(r for r in (n.rendered() for n in notes) if r),
    )


def _person(node: _Node) -> Person:
    return Person(
        id=node.attrs.get("id", "").strip(),
        name=_text_of(node, "name"),
        organization=_text_of(node, "org"),
        uri=repair_contact_uri(_collapse(_raw_of(node, "uri"))),
        updated=_text_of(node, "updated"),
    )


def _raw_of(node: _Node, tag: str) -> str:
    child = node.first(tag)
    return "" if child is None else child.raw_text()


class _Builder:
    """Expat handlers that turn records and people into model objects as they close."""

    def __init__(self, parser: expat.XMLParserType, path: str) -> None:
        self.parser = parser
        self.path = path
        self.stack: list[_Node] = []
        self.records: list[ServiceRecord] = []
        self.problems: list[ParseProblem] = []
        self.people: dict[str, Person] = {}
        self.updated = ""
        self.updated_date: date | None = None
        self.held = 0  # nodes and text runs below the root not yet converted and dropped
        self.marks: list[int] = []  # ``held`` before each open element began
        self.tags: dict[str, str] = {}  # namespaced name -> local name

    def _too_many(self) -> RegistryFormatError:
        return RegistryFormatError(
            f"one element holds more than {MAX_HELD_NODES:,} elements and text runs:"
            " not the IANA registry XML",
            path=self.path,
            line=self.parser.CurrentLineNumber,
        )

    def start(self, qname: str, attrs: dict[str, str]) -> None:
        # Called 105,000 times for the official XML: kept flat on purpose.
        stack = self.stack
        if len(stack) >= MAX_DEPTH:
            raise RegistryFormatError(
                f"elements nested deeper than {MAX_DEPTH} levels: not the IANA registry XML"
                " (it nests 5 deep)",
                path=self.path,
                line=self.parser.CurrentLineNumber,
            )
        tag = self.tags.get(qname)
        if tag is None:
            tag = self.tags[qname] = qname.rpartition(" ")[2]
        node = _Node(tag, attrs, self.parser.CurrentLineNumber)
        self.marks.append(self.held)
        if stack:
            self.held += 1
            if self.held > MAX_HELD_NODES:
                raise self._too_many()
            stack[-1].children.append(node)
        else:
            self._check_root(node)
        stack.append(node)

    def _check_root(self, root: _Node) -> None:
        if root.tag != "registry" or root.attrs.get("id") != REGISTRY_ID:
            # The element's name only (an XML name holds no secrets); never
            # its attribute values or text.
            found = f"<{root.tag[:40]}>" if root.tag != "registry" else "another <registry>"
            raise RegistryFormatError(
                f"not the service-names registry: expected <registry id={REGISTRY_ID!r}>"
                f" as the root element, found {found}",
                path=self.path,
                line=root.line,
            )

    def end(self, qname: str) -> None:
        node = self.stack.pop()
        mark = self.marks.pop()
        depth = len(self.stack)  # 1: child of <registry>; 2: grandchild
        if depth == 1:
            self.stack[0].children.pop()  # done with it: keep memory flat
            self.held = mark
            if node.tag == "record":
                self._add_record(node)
            elif node.tag == "updated":
                self.updated = _collapse(node.raw_text())
                self.updated_date = parse_registry_date(self.updated)
        elif depth == 2 and node.tag == "person" and self.stack[1].tag == "people":
            self.stack[1].children.pop()
            self.held = mark
            person = _person(node)
            if person.id:
                self.people[person.id] = person
            else:
                self.problems.append(ParseProblem(self.path, node.line, "<person> without an id"))

    def _add_record(self, node: _Node) -> None:
        if len(self.problems) >= MAX_PROBLEMS:
            raise too_many_problems(self.path, node.line, "the IANA registry XML")
        try:
            self.records.append(_record(node, self.path, self.updated_date))
        except ValueError as exc:
            self.problems.append(ParseProblem(self.path, node.line, str(exc)))

    def text(self, data: str) -> None:
        """Keep text inside records and people; what lies between them is layout."""
        stack = self.stack
        if len(stack) > 1 and stack[-1].tag not in _LAYOUT_ONLY:
            self.held += 1
            if self.held > MAX_HELD_NODES:
                raise self._too_many()
            stack[-1].children.append(data)


def _check_bytes(data: bytes, path: str) -> None:
    if not data.strip():
        raise RegistryFormatError("empty file: expected the IANA registry XML", path=path)
    if not data.startswith(_UTF16_BOMS) and b"\x00" in data:
        offset = data.index(b"\x00")
        raise RegistryFormatError(
            "binary content (a NUL byte): expected the IANA registry XML",
            path=path,
            line=data.count(b"\n", 0, offset) + 1,
        )


def _forbid(path: str, parser: expat.XMLParserType, what: str) -> NoReturn:
    """Refuse a DTD feature outright, as defusedxml does: no entity is ever expanded."""
    raise RegistryFormatError(
        f"{what} are not allowed in a registry (the official XML has none)",
        path=path,
        line=parser.CurrentLineNumber,
    )


def _run(data: bytes, path: str, encoding: str | None) -> _Builder:
    parser = expat.ParserCreate(encoding, namespace_separator=" ")
    parser.buffer_text = True
    # No entity declaration (internal ones are how billion-laughs expands),
    # no external entity or DTD is ever fetched (XXE).
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.EntityDeclHandler = lambda *_: _forbid(path, parser, "entity declarations")
    parser.UnparsedEntityDeclHandler = lambda *_: _forbid(path, parser, "entity declarations")
    parser.ExternalEntityRefHandler = lambda *_: _forbid(path, parser, "external entities")
    builder = _Builder(parser, path)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.text
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise RegistryFormatError(
            f"malformed XML: {expat.ErrorString(exc.code)} (column {exc.offset + 1})",
            path=path,
            line=exc.lineno,
        ) from None
    except (LookupError, ValueError, UnicodeError):
        # Expat asks Python's codecs for an encoding it lacks: an unknown name
        # raises LookupError, a multi-byte one ValueError. The name is not
        # quoted: the file may be no registry at all.
        raise RegistryFormatError(
            "the XML declaration names an encoding that cannot be read"
            " (the registry is UTF-8)",
            path=path,
            line=parser.CurrentLineNumber,
        ) from None
    return builder


def parse_iana_xml(data: bytes, path: str, *, encoding: str | None = None) -> ParsedSource:
    """Parse the official IANA registry XML held in ``data``; ``path`` names it in messages.

    A record that cannot be understood becomes a ``ParseProblem`` and the
    rest still loads; anything that is not the registry XML raises
    ``RegistryFormatError``. ``encoding`` overrides the document's own
    declaration (the loader transcodes UTF-16/32 to UTF-8 and says so).
    """
    _check_bytes(data, path)
    built = _run(data, path, encoding)
    last_updated: date | None = parse_registry_date(built.updated)
    if last_updated is None:
        last_updated = newest_date(d for r in built.records for d in (r.registered, r.modified))
    records = [_with_date(r, last_updated) for r in built.records]
    info = SourceInfo(path, SourceFormat.IANA_XML, last_updated, assigned_only=False)
    return ParsedSource(info=info, records=records, people=built.people, problems=built.problems)


def _with_date(record: ServiceRecord, last_updated: date | None) -> ServiceRecord:
    """The record dated with the source's date, for records read before ``<updated>``."""
    prov = record.provenance
    if prov.last_updated == last_updated:
        return record
    return replace(record, provenance=Provenance(prov.path, prov.line, last_updated))
