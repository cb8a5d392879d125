"""Contact URIs as IANA publishes them, repaired into real addresses.

IANA writes the ``@`` of an e-mail address as ``&`` (``mailto:kiku&nd.net``).
Renderings of the registry page then sometimes fed that text through an HTML
decoder, which read ``&micro`` in ``edwardr&microsoft.com`` as the legacy
entity ``&micro`` (no semicolon needed) and left ``edwardrµsoft.com``. The
damage is reversible: the character maps back to exactly one entity name, and
the ``&`` before it was the ``@``.
"""

from __future__ import annotations

import html.entities

__all__ = ["repair_contact_uri"]


def _legacy_entity_names() -> dict[str, str]:
    """Character -> entity name, for entities HTML decodes without a ``;``.

    Lower-case names win (``&amp`` over ``&AMP``): host names are lower case.
    """
    names: dict[str, str] = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";") or len(char) != 1:
            continue
        if char not in names or name.islower():
            names[char] = name
    return names


_ENTITY_OF = _legacy_entity_names()


def repair_contact_uri(uri: str) -> str:
    """``mailto:kiku&nd.net`` -> ``mailto:kiku@nd.net``; undo entity damage too.

    URIs that are not ``mailto:`` (``https://...``) are returned unchanged
    except for surrounding white space.
    """
    uri = uri.strip()
    if not uri.lower().startswith("mailto:"):
        return uri
    scheme, address = uri[:7], uri[7:]
    if "@" in address:
        return "mailto:" + address
    if "&" in address:
        local, _, domain = address.rpartition("&")
        return f"mailto:{local}@{domain}"
    damaged = [i for i, ch in enumerate(address) if ch in _ENTITY_OF]
    if len(damaged) == 1:
        i = damaged[0]
        address = f"{address[:i]}@{_ENTITY_OF[address[i]]}{address[i + 1:]}"
    del scheme
    return "mailto:" + address
