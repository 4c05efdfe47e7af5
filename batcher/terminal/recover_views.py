"""What `batcher recover` prints."""

from __future__ import annotations

from batcher.run.recover import RecoverReport
from batcher.terminal import console as output
from batcher.terminal.credit_views import print_reconcile


def print_recover(report: RecoverReport) -> None:
    states = ", ".join(f"{state} {n}" for state, n in sorted(report.rebuilt.states.items()))
    output.result(
        f"rebuilt batch {report.batch} from {report.manifest}: {report.items} items "
        f"({states}), marked recovered"
    )
    output.result(f"credits: charged {report.rebuilt.charged}, refunded {report.rebuilt.refunded}")
    for rescue in report.rescued:
        output.result(
            f"rescue file {rescue.path}: {rescue.applied} answers recorded, "
            f"{rescue.already} already there"
        )
    print_reconcile(report.polled, as_json=False)
    output.result(
        f"next: `batcher run JOB.yaml` adds the prompts the manifest did not list and "
        f"sends only those; `batcher resume {report.batch}` follows the renders"
        + (
            f"; {report.in_doubt} item(s) in doubt are re-sent only with --resend-unconfirmed"
            if report.in_doubt
            else ""
        )
    )
