"""`audit`, `reconcile` and `account` on the terminal: results on stdout (tables,
CSV, JSON), notes and warnings on stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from rich.table import Table
from rich.text import Text

from batcher.client.magic_hour import Account
from batcher.ledger import GroupValue
from batcher.reports import audit
from batcher.reports.audit import AuditReport
from batcher.reports.reconcile import ReconcileReport, excerpt, reconcile_json
from batcher.terminal import console as output
from batcher.terminal.ledger_views import missing_ledger
from batcher.terminal.tables import print_table

KEY_MIN_WIDTH: Final = 14  # a squeezed table keeps this much of each name column

_HEADERS: Final = {
    "batch": "batch",
    "model": "model",
    "day": "day (UTC)",
    "resolution": "resolution",
    "credits_charged": "charged",
    "credits_refunded": "refunded",
    "credits_net": "net",
    "images": "images",
    "items": "items",
    "failures": "failures",
    "credits_per_image": "per image",
}

# --------------------------------------------------------------------------- audit


def print_audit(report: AuditReport, fmt: str, *, db: str, chart: Path | None) -> None:
    if not report.ledger_found:
        missing_ledger(db)
    if chart is not None:
        output.note(f"chart written to {chart}")
    if fmt == "json":
        output.result(json.dumps(audit.audit_json(report), indent=2))
    elif fmt == "csv":
        output.result(audit.audit_csv(report).rstrip("\n"))
        output.note(audit.totals_line(report))
    elif report.rows:
        print_table(audit_table(report))
    else:
        output.note("no credit rows match: nothing was charged or refunded in this selection")
    doubt = audit.doubt_message(report)
    if doubt and (fmt != "table" or not report.rows):
        output.warning(doubt)  # a printed table carries it in its caption instead


def _cell(value: int | float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}"


def _group_cell(key: str, value: GroupValue) -> Text:
    if value is None:
        # Only resolution can be NULL: the job set none and the server chose.
        return Text("(server's choice)" if key == "resolution" else "-")
    # Text, not str: a batch named "[red]" is a name, not markup.
    return Text(audit.plain(value) or "")


def audit_table(report: AuditReport) -> Table:
    """A Rich table, the totals in its footer and the items in doubt in its caption."""
    keys = report.query.group_by
    totals = report.totals.metrics()
    table = Table(
        title=Text(audit.report_title(report.query)),
        title_justify="left",
        show_footer=True,
        caption=audit.doubt_message(report),
        caption_justify="left",
    )
    # A narrow terminal folds names rather than cutting them with an ellipsis:
    # an audit must never hide which model or batch a figure belongs to.
    for index, key in enumerate(keys):
        longest = max(
            (len(_group_cell(key, row.group[index][1])) for row in report.rows), default=0
        )
        table.add_column(
            _HEADERS[key],
            footer="total" if index == 0 else "",
            overflow="fold",
            min_width=min(max(longest, 5), KEY_MIN_WIDTH),
        )
    for metric in audit.METRICS:
        # Figures are never cut: a column is at least as wide as its widest figure.
        widest = max((len(_cell(row.metrics()[metric])) for row in report.rows), default=0)
        footer = _cell(totals[metric])
        table.add_column(
            _HEADERS[metric],
            justify="right",
            footer=footer,
            overflow="fold",
            min_width=max(widest, len(footer), len(_HEADERS[metric])),
        )
    for row in report.rows:
        table.add_row(
            *(_group_cell(key, value) for key, value in row.group),
            *(_cell(value) for value in row.metrics().values()),
        )
    return table


# --------------------------------------------------------------------------- reconcile


def print_reconcile(report: ReconcileReport, *, as_json: bool) -> None:
    for warning in report.warnings:
        output.warning(warning)
    for skipped in report.skipped:
        output.note(f"skipped batch {skipped.name!r}: {skipped.reason}")
    if as_json:
        output.result(json.dumps(reconcile_json(report), indent=2))
        return
    whole = not output.stdout.is_terminal
    statuses = ", ".join(f"{status} {count}" for status, count in report.statuses.items())
    output.result(
        f"{len(report.batches)} batch(es), {report.projects_polled} project(s) polled"
        + (f": {statuses}" if statuses else "")
    )
    output.result(f"refunds found: {len(report.refunds)} ({report.credits_refunded:,} credits)")
    if report.refunds:
        table = Table(title="refunds recorded", title_justify="left")
        for column in ("batch", "key", "project", "status"):
            table.add_column(column)
        table.add_column("credits", justify="right")
        for refund in report.refunds:
            table.add_row(
                Text(refund.batch),
                refund.item_key,
                Text(refund.project_id),
                Text(refund.status),
                f"{refund.credits:,}",
            )
        print_table(table)
    if report.charges:
        output.result(
            f"charges found: {len(report.charges)} ({report.credits_charged} credits: "
            "surcharges, and charges the create's answer did not tell)"
        )
    output.result(f"projects not found (404): {len(report.not_found)}")
    for problem in report.not_found:
        output.result(f"  {problem.batch} {problem.item_key} {problem.project_id}")
    for problem in report.errors:
        output.warning(f"could not poll {problem.project_id} ({problem.batch}): {problem.detail}")
    for problem in report.mismatches:
        output.warning(f"{problem.project_id} ({problem.batch}): {problem.detail}")
    output.result(f"items in doubt: {len(report.in_doubt)}")
    if report.in_doubt:
        table = Table(
            title="in doubt: sent, answer lost; search the web library for the name",
            title_justify="left",
        )
        for column in ("batch", "name", "key", "sent (UTC)", "prompt"):
            table.add_column(column)
        for item in report.in_doubt:
            # User text (names, prompts) goes in as Text: never read as markup.
            prompt = " ".join(item.prompt.split()) if whole else excerpt(item.prompt)
            table.add_row(
                Text(item.batch),
                Text(item.project_name),
                item.key,
                item.sent_at.strftime("%Y-%m-%d %H:%M:%S") if item.sent_at else "-",
                Text(prompt),
            )
        print_table(table)


# --------------------------------------------------------------------------- account


def account_document(account: Account) -> dict[str, object]:
    return {
        "id": account.account_id,
        "email": account.email,
        "credits": account.credits,
        "tier": account.tier,
        "subscription": account.subscription,
    }


def print_account(account: Account, *, as_json: bool) -> None:
    if as_json:
        output.result(json.dumps(account_document(account), indent=2))
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("credits", f"{account.credits:,}")
    table.add_row("tier", Text(account.tier))
    table.add_row("email", Text(account.email or "-"))
    table.add_row("account", Text(account.account_id or "-"))
    if account.subscription is not None:
        table.add_row("subscription", Text(json.dumps(account.subscription)))
    print_table(table)
