"""``analyze -f prom``: packets without ports and undecodable packets are separate families."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from portwatch.analysis.render import OutputFormat, render
from portwatch.analysis.report import Report


def _report(decode: dict[str, int]) -> Report:
    return Report(captures=["x.pcap"], packets=sum(decode.values()), bytes=0, services=[],
                  flows=[], decode=decode, registry={})


def _samples(text: str, name: str) -> dict[str, float]:
    return {s.labels["reason"]: s.value for fam in text_string_to_metric_families(text)
            if fam.name == name for s in fam.samples}


def test_prom_splits_portless_packets_from_decode_errors() -> None:
    text = render(_report({"icmp": 3, "non-ip": 2, "fragment": 1, "other-ip": 4,
                           "truncated": 5, "malformed": 6, "fragment-attributed": 7}),
                  OutputFormat.PROM)
    assert _samples(text, "portwatch_capture_portless_packets") == {
        "icmp": 3, "non-ip": 2, "fragment": 1, "other-ip": 4}
    assert _samples(text, "portwatch_capture_decode_errors") == {
        "truncated": 5, "malformed": 6, "unsupported-link": 0}
    # the family every earlier file had stays, with every reason as before
    assert _samples(text, "portwatch_capture_undecoded_packets")["fragment-attributed"] == 7


def test_prom_portless_and_error_series_exist_at_zero() -> None:
    text = render(_report({}), OutputFormat.PROM)
    assert set(_samples(text, "portwatch_capture_portless_packets").values()) == {0}
    assert len(_samples(text, "portwatch_capture_portless_packets")) == 4
    assert len(_samples(text, "portwatch_capture_decode_errors")) == 3
