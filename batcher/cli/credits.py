"""`batcher audit`, `batcher reconcile` and `batcher account`: where the credits went."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import anyio
import click
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from batcher.cli.options import base_url_option, db_option
from batcher.client import retry
from batcher.client.magic_hour import Account, MagicHourClient
from batcher.errors import EXIT_FAILURE, EXIT_OK, BatcherError
from batcher.ledger import GROUP_KEYS, Ledger, display_url
from batcher.reports import audit
from batcher.reports.reconcile import ReconcileReport, excerpt, reconcile, reconcile_json
from batcher.run import prepare as service
from batcher.settings import DEFAULT_CONCURRENCY, ApiConfig, database_url
from batcher.terminal import console as output


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
    query = audit.AuditQuery(since=since, until=until, batch=batch_name, group_by=group_by)
    if chart_path is not None:
        # Before any work: a missing extra or a bad suffix is bad input (exit 2).
        audit.check_chart_path(chart_path)
        audit.require_matplotlib()
    url = database_url(db_url)
    ledger, found = Ledger.open_for_report(url)
    if not found:
        output.warning(f"no ledger at {display_url(url)} yet: nothing has run with it")
    with ledger:
        report = audit.build_audit(ledger, query, chart=chart_path is not None)
    if report.chart is not None and chart_path is not None:
        # First: a chart that cannot be written fails the command before any result
        # reaches stdout, so a script never takes a half-done run for a good one.
        audit.write_chart(report.chart, chart_path, title=audit.chart_title(query))
        output.note(f"chart written to {chart_path}")
    if fmt == "json":
        output.result(json.dumps(audit.audit_json(report), indent=2))
    elif fmt == "csv":
        output.result(audit.audit_csv(report).rstrip("\n"))
        output.note(audit.totals_line(report))
    elif report.rows:
        _print_table(audit.audit_table(report))
    else:
        output.note("no credit rows match: nothing was charged or refunded in this selection")
    doubt = audit.doubt_message(report)
    if doubt and (fmt != "table" or not report.rows):
        output.warning(doubt)  # a printed table carries it in its caption instead


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
    api = ApiConfig.from_env(base_url)
    service.require_key(api)
    with Ledger.open(database_url(db_url), create=False) as ledger:
        report = anyio.run(_reconcile, ledger, api, batch_name, concurrency)
    for warning in report.warnings:
        output.warning(warning)
    for skipped in report.skipped:
        output.note(f"skipped batch {skipped.name!r}: {skipped.reason}")
    if as_json:
        output.result(json.dumps(reconcile_json(report), indent=2))
    else:
        _print_reconcile(report)
    sys.exit(EXIT_OK if report.complete else EXIT_FAILURE)


def _print_table(table: Table) -> None:
    """On a terminal, fit its width; into a file or a pipe, never squeeze the figures."""
    console = output.stdout
    if console.is_terminal:
        console.print(table)
        return
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if natural <= console.width:
        console.print(table)
        return
    # Console.print clamps `width` to the console's own: a one-off console on the
    # same stream prints the table at its natural width instead.
    Console(file=console.file, width=natural, color_system=None).print(table)


async def _reconcile(
    ledger: Ledger, api: ApiConfig, batch_name: str | None, concurrency: int
) -> ReconcileReport:
    async with MagicHourClient(api, concurrency=concurrency) as client:
        return await reconcile(ledger, client, batch_name, concurrency=concurrency)


def _print_reconcile(report: ReconcileReport) -> None:
    statuses = ", ".join(f"{status} {count}" for status, count in report.statuses.items())
    output.result(
        f"{len(report.batches)} batch(es), {report.projects_polled} project(s) polled"
        + (f": {statuses}" if statuses else "")
    )
    output.result(f"refunds found: {len(report.refunds)} ({report.credits_refunded} credits)")
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
                str(refund.credits),
            )
        _print_table(table)
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
            table.add_row(
                Text(item.batch),
                Text(item.project_name),
                item.key,
                item.sent_at.strftime("%Y-%m-%d %H:%M:%S") if item.sent_at else "-",
                Text(excerpt(item.prompt)),
            )
        _print_table(table)


@click.command(name="account")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@base_url_option
def account_command(as_json: bool, base_url: str | None) -> None:
    """Balance and tier of the API key's account (GET /v1/account).

    Needs MAGIC_HOUR_API_KEY; the API base URL comes from --base-url or
    MAGIC_HOUR_BASE_URL.
    """
    api = ApiConfig.from_env(base_url)
    service.require_key(api)
    account = anyio.run(_account, api)
    if as_json:
        output.result(
            json.dumps(
                {
                    "id": account.account_id,
                    "email": account.email,
                    "credits": account.credits,
                    "tier": account.tier,
                    "subscription": account.subscription,
                },
                indent=2,
            )
        )
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("credits", str(account.credits))
    table.add_row("tier", Text(account.tier))
    table.add_row("email", Text(account.email or "-"))
    table.add_row("account", Text(account.account_id or "-"))
    if account.subscription is not None:
        table.add_row("subscription", Text(json.dumps(account.subscription)))
    output.stdout.print(table)


async def _account(api: ApiConfig) -> Account:
    async with MagicHourClient(api, concurrency=1) as client:
        return await retry.read(client.get_account)


COMMANDS: list[click.Command] = [audit_command, reconcile_command, account_command]
