"""Headers: text from a mail, a template or the config made fit for one header line.

The one cleaner that parsing (what a sender wrote), composition (what we write back) and
the config (names that go into From) all use, so a header is cleaned the same everywhere.
"""

from __future__ import annotations

import re

_LINE_BREAKS_AND_TABS = re.compile(r"[\t\n\r\v\f\x85\u2028\u2029]+")
_OTHER_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")


def one_line(text: str) -> str:
    """`text` without CR, LF or any other control character, trimmed: a line break or tab
    becomes a space, so a value can never start a header of its own (header injection)."""
    if text.isprintable():  # the common case: no control character, no line break
        return text.strip()
    return _OTHER_CONTROLS.sub("", _LINE_BREAKS_AND_TABS.sub(" ", text)).strip()
