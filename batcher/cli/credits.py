"""`batcher audit`, `batcher reconcile` and `batcher account`: where the credits went."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click

from batcher import library
from batcher.cli.options import base_url_option, db_option
from batcher.errors import EXIT_FAILURE, EXIT_OK, BatcherError
from batcher.ledger import GROUP_KEYS, display_url
from batcher.reports import audit
from batcher.settings import DEFAULT_CONCURRENCY, database_url
from batcher.terminal import credit_views


def _when(_ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    flag = f"--{param.name}"
    try:
        return audit.parse_when(value, flag)
    except BatcherError as exc:
        raise click.BadParameter(str(exc).removeprefix(f"{flag}: ")) from None


def _group_by(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    try:
        return audit.parse_group_by(value)
    except BatcherError as exc:
        raise click.BadParameter(str(exc).removeprefix("--by: ")) from None


@click.command(name="audit")
@click.option(
    "--since",
    callback=_when,
    metavar="DATE",
    help="Only credit rows at or after DATE (inclusive): an ISO date or datetime, UTC "
    "unless it carries an offset (2026-01-31, 2026-01-31T18:00, ...+01:00).",
)
@click.option(
    "--until",
    callback=_when,
    metavar="DATE",
    help="Only credit rows before DATE (exclusive), same forms as --since: "
    "--since 2026-01-31 --until 2026-02-01 is that one UTC day.",
)
@click.option("--batch", "batch_name", metavar="NAME", help="Only this batch.")
@click.option(
    "--by",
    "group_by",
    default=",".join(audit.DEFAULT_GROUP_BY),
    show_default=True,
    callback=_group_by,
    metavar="KEYS",
    help=f"Group by one or several of {', '.join(GROUP_KEYS)}, comma-separated "
    "(--by batch,model,day). Days are UTC dates.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(audit.FORMATS),
    default="table",
    show_default=True,
    help="table (with totals), csv (a header row then the rows; totals on stderr) or json.",
)
@click.option(
    "--chart",
    "chart_path",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Also draw net credits per UTC day stacked by model to FILE.png or FILE.svg "
    "(needs the batcher[chart] extra).",
)
@db_option
def audit_command(
    since: datetime | None,
    until: datetime | None,
    batch_name: str | None,
    group_by: tuple[str, ...],
    fmt: str,
    chart_path: Path | None,
    db_url: str | None,
) -> None:
    """Credit spend from the ledger's credit rows: charges and refunds, grouped.

    \b
    Every figure is a sum over the append-only credit rows (one per charge,
    one per refund), each counted at its own time:
      charged           sum of charge rows
      refunded          sum of refund rows
      net               charged - refunded
      items             distinct items with a charge row in the group
      images            image_count of charged projects never refunded
      failures          refunded projects (failed renders), where the refund falls
      per image         net / images (blank when there are no images)
    Items in doubt (sent, answer lost: their cost is unknown) are counted apart.
    --since is inclusive, --until exclusive, both on the credit row's time;
    days are UTC dates.

    \b
    JSON: {"rows": [{<keys>, "credits_charged", "credits_refunded",
    "credits_net", "images", "items", "failures", "credits_per_image"}],
    "total_credits_charged", "total_credits_refunded", "total_credits_net",
    "items_in_doubt", ...}
    """
    report = library.audit(
        since=since, until=until, batch=batch_name, by=group_by, chart=chart_path, db=db_url
    )
    credit_views.print_audit(report, fmt, db=display_url(database_url(db_url)), chart=chart_path)


@click.command(name="reconcile")
@click.argument("batch_name", required=False, metavar="[BATCH]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Most polls in flight at once.",
)
@db_option
@base_url_option
def reconcile_command(
    batch_name: str | None,
    as_json: bool,
    concurrency: int,
    db_url: str | None,
    base_url: str | None,
) -> None:
    """Re-poll every known project id, record late refunds, list items in doubt.

    For BATCH (or every batch), every project with a charge row is polled again.
    A project whose credits_charged is now lower than its charge was refunded:
    the refund is recorded once (running reconcile again records nothing new).
    Items in doubt (sent, answer lost) are listed with the name they were sent
    under, to find them in the Magic Hour web library.

    Reconcile changes no item state and downloads nothing: `batcher resume`
    does that. Batches run with --sandbox are skipped (their emulator is gone).

    \b
    Needs MAGIC_HOUR_API_KEY. Exit codes: 0 every project answered, 1 some
    could not be polled, 2 bad input or a key the API rejects.

    \b
    JSON: {"batches", "projects_polled", "statuses": {status: count},
    "refunds_found", "credits_refunded", "refunds": [...],
    "projects_not_found": [...], "poll_errors": [...], "mismatches": [...],
    "items_in_doubt": [{"batch", "key", "name", "prompt", "model",
    "attempts", "sent_at"}], "skipped_batches": [...], "warnings": [...]}
    """
    report = library.reconcile(batch_name, concurrency=concurrency, db=db_url, base_url=base_url)
    credit_views.print_reconcile(report, as_json=as_json)
    sys.exit(EXIT_OK if report.complete else EXIT_FAILURE)


@click.command(name="account")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@base_url_option
def account_command(as_json: bool, base_url: str | None) -> None:
    """Balance and tier of the API key's account (GET /v1/account).

    Needs MAGIC_HOUR_API_KEY; the API base URL comes from --base-url or
    MAGIC_HOUR_BASE_URL.
    """
    credit_views.print_account(library.account(base_url=base_url), as_json=as_json)


COMMANDS: list[click.Command] = [audit_command, reconcile_command, account_command]
