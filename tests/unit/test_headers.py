"""The header cleaner: nothing from input may break a header line or carry a control."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from supportd.mail.headers import one_line


def test_line_breaks_and_tabs_become_one_space() -> None:
    assert one_line("Hi\r\nBcc: victim@x") == "Hi Bcc: victim@x"
    assert one_line("a\rb\nc\td\x0be\x0cf\x85g\u2028h\u2029i") == "a b c d e f g h i"


def test_other_control_characters_are_dropped() -> None:
    assert one_line("a\x00b\x1bc\x7fd\x9be") == "abcde"


def test_printable_text_is_only_trimmed() -> None:
    # No-break space, a zero-width joiner in an emoji, runs of spaces: all kept as written.
    text = "Zoë\u00a0& co  —  👩\u200d💻 [Support #7]"
    assert one_line(f"  {text} ") == text


@given(st.text())
def test_no_control_character_or_line_separator_survives(text: str) -> None:
    cleaned = one_line(text)
    assert not any(unicodedata.category(c) in {"Cc", "Zl", "Zp"} for c in cleaned)
    assert cleaned == cleaned.strip()
