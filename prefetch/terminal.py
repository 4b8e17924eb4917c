"""Text from servers reaches terminals and logs with its control characters escaped, so that a file
name or an error message cannot move the cursor, retitle the terminal, erase a line or fake one.

`printable` is for one server-supplied string (a file name, an `X-Error-Message`): everything is
escaped, newlines included. `escape_controls` is for a whole message about to be printed: our own layout
(newlines, tabs) stays, every other control character is escaped (defence in depth for a string that
reached a message without `printable`).

`EVENT_ATTRIBUTE` marks a log record that is shown as an event of its own (a retry): under `--json` it is
not written a second time as a `log` event.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the Unicode marks that reorder text on screen (bidi overrides).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROLS_BUT_LAYOUT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
EVENT_ATTRIBUTE = "prefetch_event"  # `log.warning(..., extra={EVENT_ATTRIBUTE: "retry"})`


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str) -> str:
    """`text` with every control character escaped: `a\\x1b]0;pwned\\x07` stays visible as such."""
    return _CONTROLS.sub(_escape, text)


def escape_controls(text: str) -> str:
    """A message for a terminal or a log: control characters escaped except newlines and tabs."""
    return _CONTROLS_BUT_LAYOUT.sub(_escape, text)
