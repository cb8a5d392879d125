from __future__ import annotations

import pytest

from portwatch.registry.formats.contacts import repair_contact_uri


@pytest.mark.parametrize(
    ("published", "real"),
    [
        ("mailto:kiku&nd.net.fujitsu.co.jp", "mailto:kiku@nd.net.fujitsu.co.jp"),
        ("mailto:edwardrµsoft.com", "mailto:edwardr@microsoft.com"),
        ("mailto:ops¬es.example", "mailto:ops@notes.example"),
        ("mailto:a®ion.example", "mailto:a@region.example"),
        ("mailto:a©right.example", "mailto:a@copyright.example"),
        ("mailto:already@example.org", "mailto:already@example.org"),
        ("  mailto:x&y.org ", "mailto:x@y.org"),
        ("https://example.org/contact", "https://example.org/contact"),
    ],
)
def test_contact_uri_ampersand_and_entity_damage_become_at_signs(published: str, real: str) -> None:
    assert repair_contact_uri(published) == real


def test_mailto_without_any_separator_is_left_as_published() -> None:
    assert repair_contact_uri("mailto:nobody") == "mailto:nobody"

