"""``crm-stream decode``'s JSON lines are plain printable ASCII (issue 22 item 13)."""

from __future__ import annotations

import json

from crmstream.decode import json_line


def test_bytes_and_text_outside_printable_ascii_are_escaped_so_a_record_is_one_line() -> None:
    raw = bytes(range(256))  # a sketch image or a dead letter's raw bytes: any byte at all
    line = {"key": b"k\x85ey", "value": {"raw": raw, "name": "caf\u00e9 \u2028 \U0001f600\x7f"}}
    out = json_line(line)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    assert all(0x20 <= b <= 0x7E for b in out[:-1]), out
    text = out.decode("ascii")
    # U+0085 (NEL) and U+2028 split a str under splitlines(); escaped, nothing does.
    assert len(text.splitlines()) == 1
    back = json.loads(text)
    assert back["key"].encode("latin-1") == b"k\x85ey"
    assert back["value"]["raw"].encode("latin-1") == raw
    assert back["value"]["name"] == "caf\u00e9 \u2028 \U0001f600\x7f"
    assert "\\u0085" in text and "\\ud83d\\ude00" in text
