"""`batcher gallery` and `batcher review`: looking at a batch's results."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batcher.cli.options import db_option
from batcher.ledger import Ledger
from batcher.settings import database_url
from batcher.terminal import console as output

out_option = click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    metavar="DIR",
    help="The batch's folder, as given to `run --out` [default: where its images "
    "were saved, else out/<batch name>/].",
)


@click.command()
@click.argument("batch_name", metavar="BATCH")
@click.option(
    "--output",
    "output_file",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Where to write the page [default: <batch folder>/index.html].",
)
@click.option("--rows", metavar="VAR", help="The grid's rows: a variable or a setting.")
@click.option("--cols", metavar="VAR", help="The grid's columns: a variable or a setting.")
@out_option
@db_option
def gallery(
    batch_name: str,
    output_file: Path | None,
    rows: str | None,
    cols: str | None,
    out_dir: Path | None,
    db_url: str | None,
) -> None:
    """Write a static page of BATCH's images that works from file:// with no network.

    Counts per state, credits, a card per item, filters by state, model and
    variable, and a grid of two axes (by default the batch's first two
    variables). Thumbnails go to <batch folder>/.thumbs/. Prints the page's path.
    """
    from batcher.reports.gallery import write_gallery

    with Ledger.open(database_url(db_url), create=False) as ledger:
        result = write_gallery(
            ledger, batch_name, out_dir=out_dir, output=output_file, rows=rows, cols=cols
        )
    made = f", {result.thumbnails_made} new thumbnails" if result.thumbnails_made else ""
    output.note(f"{result.items} items, {result.images} images{made}")
    output.result(str(result.path))


@click.command()
@click.argument("batch_name", metavar="BATCH")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any but loopback needs the token printed in the URL.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65_535),
    default=0,
    show_default=True,
    help="Port; 0 picks a free one.",
)
@click.option(
    "--export",
    "export_format",
    type=click.Choice(["csv", "json"]),
    help="Print the decisions (one row per reviewed image) instead of serving.",
)
@click.option("--rows", metavar="VAR", help="The grid's rows: a variable or a setting.")
@click.option("--cols", metavar="VAR", help="The grid's columns: a variable or a setting.")
@out_option
@db_option
def review(
    batch_name: str,
    host: str,
    port: int,
    export_format: str | None,
    rows: str | None,
    cols: str | None,
    out_dir: Path | None,
    db_url: str | None,
) -> None:
    """Serve BATCH's gallery with review controls and print its URL.

    Pick, reject or clear each image (keys: j/k or arrows move, p pick, x
    reject, u clear, f full size), with an optional note; every decision is
    stored in the ledger at once. Stop with Ctrl-C.
    """
    url = database_url(db_url)
    if export_format is not None:
        from batcher.reports import review_export

        with Ledger.open(url, create=False) as ledger:
            rows_out = review_export.export_rows(ledger, batch_name)
        if export_format == "json":
            output.result(review_export.export_json(batch_name, rows_out))
        else:
            sys.stdout.write(review_export.export_csv(rows_out))
        return

    from batcher.reports.gallery_data import gallery_data, gallery_folder
    from batcher.review import ReviewServer, ReviewTarget, serve

    with Ledger.open(url, create=False) as ledger:
        folder = gallery_folder(ledger, batch_name, out_dir)
        gallery_data(ledger, batch_name, folder, rows=rows, cols=cols)  # fail early: exit 2
        target = ReviewTarget(ledger, batch_name, folder, rows=rows, cols=cols)

        def ready(server: ReviewServer) -> None:
            output.note(f"reviewing {batch_name!r} ({folder}); Ctrl-C stops")
            output.result(server.url)
            sys.stdout.flush()

        try:
            serve(target, host=host, port=port, on_ready=ready)
        except KeyboardInterrupt:  # Ctrl-C is how a review server is meant to stop
            output.note("review: stopped; every decision is in the ledger")


COMMANDS: list[click.Command] = [gallery, review]
