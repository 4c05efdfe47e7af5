"""Text from outside (prompts, names, API messages) made safe to print.

A prompt or an error message may hold ANSI escape sequences or other control
characters (a terminal title change, a cleared screen, a hidden line). What
batcher prints never carries them: escape sequences are dropped whole, every
other control character (C0 but newline and tab, DEL, C1) is dropped. Pure.
"""

from __future__ import annotations

import re
from typing import Final

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), other two-character escapes,
# and the 8-bit CSI.
_ESCAPES: Final = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[@-Z\\-_]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
)
_CONTROLS: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` without escape sequences or control characters (newlines and tabs kept)."""
    if text.isprintable():
        return text
    return _CONTROLS.sub("", _ESCAPES.sub("", text))
