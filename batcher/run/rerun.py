"""`batcher rerun BATCH --rejected`: what to send again after a review, as a plan.

Pure: from the batch's items, its decisions in force and its existing reruns,
`plan_rerun` makes one new item per item with a rejected image (same prompt
and settings unless `--model`/`--resolution` override them, checked against
the catalog like a job file), priced. The use case that writes and sends it
is `batcher.run.session.rerun_batch`.

    rejected item ──plan_rerun──▶ RerunEntry (new key, settings, estimate, redoes)
                                        │ Ledger.add_items(redo_of=...)
                                        ▼
                               a pending item of the same batch, sent like `run`

Twice the same rejects do not make two reruns: an item that already has one
is skipped (and named), unless `again`. A rerun made earlier and still
pending (interrupted, refused with 429/5xx) is sent by the next rerun instead
of being made again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from batcher.errors import ConfigError
from batcher.jobfile.catalog import Catalog
from batcher.jobfile.items import ItemSettings, JobItem, identity_digest, item_key
from batcher.ledger import ItemRecord, ReviewedImage

if TYPE_CHECKING:
    from batcher.run.summary import RunSummary

REJECT: Final = "reject"
LISTED_PROBLEMS: Final = 10  # settings problems named in the error; the rest are counted


@dataclass(frozen=True, slots=True)
class RerunEntry:
    """One item the rerun sends: a new one, or one an earlier rerun left unsent."""

    key: str  # the new item's key
    prompt: str
    settings: ItemSettings
    redoes: str  # the key of the item it redoes
    images: tuple[int, ...]  # the rejected images of that item, numbered from 1
    estimate: int  # credits, a lower bound unless `exact`
    exact: bool
    left_over: bool = False  # made by an earlier rerun and still pending: sent now


@dataclass(frozen=True, slots=True)
class RerunPlan:
    """What a rerun would send, and what it leaves out."""

    batch: str
    entries: tuple[RerunEntry, ...]
    # Items with a rejected image that have a rerun already (`again` makes another).
    already_rerun: tuple[str, ...] = ()
    # Pending items of the batch that are not reruns: a rerun refuses to send
    # them along (`resume` is for those).
    other_pending: int = 0
    budget_left: int | None = None  # what the batch's budget still allows, if it has one

    @property
    def credits(self) -> int:
        """The estimate of everything the rerun sends (a lower bound unless `exact`)."""
        return sum(entry.estimate for entry in self.entries)

    @property
    def exact(self) -> bool:
        return all(entry.exact for entry in self.entries)

    @property
    def new(self) -> tuple[RerunEntry, ...]:
        """The entries the rerun adds to the ledger."""
        return tuple(entry for entry in self.entries if not entry.left_over)

    def credits_per_model(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for entry in self.entries:
            totals[entry.settings.model] += entry.estimate
        return dict(sorted(totals.items()))


@dataclass(frozen=True, slots=True)
class RerunResult:
    """What `batcher.rerun` did: the plan, and the run's summary when it ran."""

    plan: RerunPlan
    summary: RunSummary | None = None  # None: a dry run, declined, or nothing to rerun
    dry_run: bool = False
    declined: bool = False  # the confirmation said no

    @property
    def exit_code(self) -> int:
        return 0 if self.summary is None else self.summary.exit_code


def check_overrides(catalog: Catalog, model: str | None, resolution: str | None) -> None:
    """`--model` and `--resolution` alone (each must exist); ConfigError names the flag."""
    if model is not None and catalog.model(model) is None:
        raise ConfigError(f"--model {model}: unknown model; known: {', '.join(catalog.models)}")
    if resolution is not None and resolution not in catalog.accepted_resolutions:
        raise ConfigError(
            f"--resolution {resolution}: unknown resolution; "
            f"known: {', '.join(catalog.accepted_resolutions)}"
        )


def rerun_key(batch_name: str, prompt: str, settings: ItemSettings, redoes: str, nth: int) -> str:
    """The key of the `nth` (from 0) rerun of item `redoes`: like any item's key
    (batch, prompt, settings), and the item it redoes, so that it never meets
    the original's key nor another rerun's."""
    identity = identity_digest(prompt, settings) + b"\x00redo\x00" + redoes.encode("utf-8")
    return item_key(batch_name, identity, nth)


def plan_rerun(
    batch_name: str,
    rejected: Sequence[ReviewedImage],
    items: Mapping[str, ItemRecord],
    redo_links: Mapping[str, str],
    catalog: Catalog,
    *,
    model: str | None = None,
    resolution: str | None = None,
    again: bool = False,
    other_pending: int = 0,
    budget_left: int | None = None,
) -> RerunPlan:
    """The rerun of the items whose images were `rejected`.

    `items` holds (at least) the rejected items and the batch's reruns, by key;
    `redo_links` is every rerun of the batch (new key -> key it redoes).
    ConfigError names every item whose settings the catalog forbids.
    """
    check_overrides(catalog, model, resolution)
    images: dict[str, list[int]] = {}
    for review in rejected:
        if review.verdict == REJECT:
            images.setdefault(review.item_key, []).append(review.image + 1)
    reruns: dict[str, list[str]] = {}
    for new_key, old_key in redo_links.items():
        reruns.setdefault(old_key, []).append(new_key)

    entries: list[RerunEntry] = []
    already: list[str] = []
    problems: list[str] = []
    for old_key, numbers in images.items():
        old = items.get(old_key)
        if old is None:
            continue  # reviewed, then dropped from the batch: nothing to redo
        unsent = [
            items[key]
            for key in reruns.get(old_key, ())
            if key in items and items[key].state == "pending"
        ]
        if unsent:
            for record in unsent:
                entries.append(_left_over(record, old_key, tuple(numbers)))
            continue
        if reruns.get(old_key) and not again:
            already.append(old_key)
            continue
        settings = replace(
            old.settings,
            model=model or old.settings.model,
            resolution=resolution or old.settings.resolution,
            name=None,  # the create's name then carries the new key (find it in the library)
        )
        issues = catalog.model_problems(settings.model, settings.resolution, settings.image_count)
        if issues:
            problems.extend(
                f"item {old_key} ({_excerpt(old.prompt)}): {message}" for _, message in issues
            )
            continue
        estimate = catalog.estimate(settings)
        key = rerun_key(batch_name, old.prompt, settings, old_key, len(reruns.get(old_key, ())))
        entries.append(
            RerunEntry(
                key=key,
                prompt=old.prompt,
                settings=settings,
                redoes=old_key,
                images=tuple(numbers),
                estimate=estimate.credits,
                exact=estimate.exact,
            )
        )
    if problems:
        flags = " ".join(
            f"{flag} {value}"
            for flag, value in (("--model", model), ("--resolution", resolution))
            if value is not None
        )
        listed = problems[:LISTED_PROBLEMS]
        if len(problems) > len(listed):
            listed.append(f"... and {len(problems) - len(listed)} more")
        raise ConfigError(
            f"rerun {flags or 'with the same settings'}: the catalog forbids "
            f"{len(problems)} item(s); nothing was sent\n  " + "\n  ".join(listed)
        )
    return RerunPlan(
        batch=batch_name,
        entries=tuple(entries),
        already_rerun=tuple(already),
        other_pending=other_pending,
        budget_left=budget_left,
    )


def new_items(plan: RerunPlan, items: Mapping[str, ItemRecord], next_ordinal: int) -> list[JobItem]:
    """The plan's new entries as job items for the ledger, after the batch's
    last item in its order, each from the place its original came from."""
    made = []
    for offset, entry in enumerate(plan.new):
        old = items[entry.redoes]
        made.append(
            JobItem(
                ordinal=next_ordinal + offset,
                key=entry.key,
                prompt=entry.prompt,
                settings=entry.settings,
                path=old.source_path or "",
                line=old.source_line or 0,
                vars=old.vars,
            )
        )
    return made


def _left_over(record: ItemRecord, redoes: str, images: tuple[int, ...]) -> RerunEntry:
    return RerunEntry(
        key=record.key,
        prompt=record.prompt,
        settings=record.settings,
        redoes=redoes,
        images=images,
        estimate=record.estimate,
        exact=record.estimate_exact,
        left_over=True,
    )


def _excerpt(prompt: str, length: int = 40) -> str:
    text = " ".join(prompt.split())
    return repr(text if len(text) <= length else text[: length - 1] + "…")


def keys_needed(rejected: Iterable[ReviewedImage], redo_links: Mapping[str, str]) -> set[str]:
    """The item keys `plan_rerun` looks at: the rejected items and every rerun."""
    return {review.item_key for review in rejected} | set(redo_links)
