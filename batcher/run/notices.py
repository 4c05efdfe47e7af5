"""What a run met that the user should hear about at the end, gathered by kind.

An odd answer of the API (a charge that could not be read, a surcharge, a
render past its deadline, a status nobody knows) is logged when it happens;
the summary gets one line per kind, with how many and a few examples, so a
night of a thousand odd answers does not bury the summary. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

EXAMPLES: Final = 3

# What each kind means for the user, as the summary says it.
SAYS: Final = {
    "charge_unknown": (
        "create answer(s) had no usable credits_charged: the project ids are kept and "
        "the charge is read from the next poll (`batcher reconcile` reads it too)"
    ),
    "surcharge": "project(s) charged more after their create (a credit row each)",
    "refund_seen": "project(s) refunded in part after their create (a credit row each)",
    "render_timeout": (
        "render(s) passed --render-timeout and were left submitted: "
        "`batcher resume` or `batcher reconcile` looks at them again"
    ),
    "odd_status": "poll answer(s) with an unknown status or an unusable body",
}


@dataclass
class Notices:
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < EXAMPLES:
            shown.append(example)

    def lines(self) -> tuple[str, ...]:
        """One line per kind, in the order first met."""
        out: list[str] = []
        for kind, count in self.counts.items():
            says = SAYS.get(kind, kind)
            more = f"; and {count - EXAMPLES} more" if count > EXAMPLES else ""
            out.append(f"{count} {says} (e.g. {'; '.join(self.examples[kind])}{more})")
        return tuple(out)
