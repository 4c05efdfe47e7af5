"""Plans: sums per model, exact estimates versus lower bounds, the budget, rendering."""

from __future__ import annotations

import json
from collections.abc import Callable

from rich.console import Console

from batcher.jobfile import JobSpec, ModelPlan, Plan, build_plan, plan_document
from batcher.jobfile.catalog import Catalog
from batcher.terminal.plan_view import render_plans

LoadText = Callable[..., JobSpec]  # the fixture of conftest.py


def rendered(plans: list[Plan]) -> str:
    console = Console(width=120, record=True, file=None, force_terminal=False)
    with console.capture() as capture:
        console.print(render_plans(plans))
    return capture.get()


def test_sums_per_model_at_the_lowest_resolution_are_exact(
    load_text: LoadText, catalog: Catalog
) -> None:
    job = load_text(
        """\
        name: exact
        defaults:
          model: flux-schnell
          resolution: 640px
        budget: 100
        prompts:
          - a
          - prompt: b
            image_count: 3
          - prompt: c
            model: krea-2
          - file: p.txt
        """,
        {"p.txt": "d\ne\n"},
    )
    plan = build_plan(job, catalog)
    assert plan.models == (
        ModelPlan("flux-schnell", items=4, images=6, estimated_credits=30, exact=True),
        ModelPlan("krea-2", items=1, images=1, estimated_credits=10, exact=True),
    )
    assert (plan.items, plan.images, plan.estimated_credits) == (5, 7, 40)
    assert not plan.estimate_is_lower_bound
    assert plan.budget == 100
    assert not plan.over_budget


def test_default_model_no_resolution_auto_and_higher_resolutions_are_lower_bounds(
    load_text: LoadText, catalog: Catalog
) -> None:
    job = load_text(
        """\
        name: bounds
        prompts:
          - server picks the model
          - prompt: no resolution
            model: z-image-turbo
          - prompt: auto
            model: z-image-turbo
            resolution: auto
          - prompt: above the lowest
            model: qwen-image-2.1
            resolution: 2k
          - prompt: lowest
            model: qwen-image-2.1
            resolution: 640px
            image_count: 2
        """
    )
    plan = build_plan(job, catalog)
    rows = {row.model: row for row in plan.models}
    assert rows["default"] == ModelPlan("default", 1, 1, 5, exact=False)
    assert rows["z-image-turbo"] == ModelPlan("z-image-turbo", 2, 2, 10, exact=False)
    # one lower-bound item makes the whole model row a lower bound
    assert rows["qwen-image-2.1"] == ModelPlan("qwen-image-2.1", 2, 3, 30, exact=False)
    assert plan.estimate_is_lower_bound
    assert plan.estimated_credits == 45


def test_rows_follow_catalog_order(load_text: LoadText, catalog: Catalog) -> None:
    job = load_text(
        "name: o\ndefaults:\n  resolution: 1k\nprompts:\n"
        "  - prompt: a\n    model: gpt-image-2\n  - prompt: b\n    model: flux-schnell\n"
    )
    assert [row.model for row in build_plan(job, catalog).models] == [
        "flux-schnell",
        "gpt-image-2",
    ]


def test_over_budget_even_on_the_lower_bound(load_text: LoadText, catalog: Catalog) -> None:
    job = load_text(
        "name: b\nbudget: 50\ndefaults:\n  model: seedream-v4\n  resolution: 4k\nprompts:\n"
        "  - a\n  - b\n"
    )
    plan = build_plan(job, catalog)
    assert plan.estimated_credits == 80
    assert plan.estimate_is_lower_bound
    assert plan.over_budget
    text = rendered([plan])
    assert "budget: 50 credits; the estimate (at least 80) already exceeds it" in text


def test_budget_lines(load_text: LoadText, catalog: Catalog) -> None:
    exact = build_plan(
        load_text(
            "name: e\nbudget: 10\ndefaults:\n  model: krea-2\n  resolution: 640px\n"
            "prompts:\n  - a\n"
        ),
        catalog,
    )
    lower = build_plan(load_text("name: l\nbudget: 1000\nprompts:\n  - a\n"), catalog)
    none = build_plan(load_text("name: n\nprompts:\n  - a\n"), catalog)
    assert "budget: 10 credits; the estimate (10) fits" in rendered([exact])
    assert "budget: 1,000 credits; the estimate is at least 5" in rendered([lower])
    assert "budget: none set" in rendered([none])


def test_the_table_flags_lower_bounds(load_text: LoadText, catalog: Catalog) -> None:
    job = load_text(
        "name: t\ndefaults:\n  resolution: 640px\nprompts:\n"
        "  - prompt: a\n    model: krea-2\n  - prompt: b\n    model: default\n"
    )
    text = rendered([build_plan(job, catalog)])
    krea = next(line for line in text.splitlines() if "krea-2" in line)
    default = next(line for line in text.splitlines() if "default" in line)
    assert "exact" in krea and "≥" not in krea
    assert "lower bound" in default and "≥ 5" in default
    assert "≥ 15" in text  # the total
    assert "≥ marks a lower bound" in text


def test_several_plans_have_a_grand_total(load_text: LoadText, catalog: Catalog) -> None:
    one = build_plan(load_text("name: one\nprompts:\n  - a\n"), catalog)
    two = build_plan(load_text("name: two\nprompts:\n  - a\n  - b\n"), catalog)
    assert "all jobs: 3 items, 3 images, ≥ 15 credits estimated" in rendered([one, two])


def lower_bound_kind(credits: int) -> dict[str, object]:
    return {
        "resolution": None,
        "image_count": 1,
        "items": 1,
        "estimated_credits": credits,
        "credits_per_item": credits,
        "basis": "lower_bound",
        "seen_on": None,
    }


def test_plan_document(load_text: LoadText, catalog: Catalog) -> None:
    plan = build_plan(
        load_text("name: j\nbudget: 7\nprompts:\n  - a\n  - prompt: b\n    model: krea-2\n"),
        catalog,
    )
    document = plan_document([plan, plan])
    json.dumps(document)  # serialisable as is
    assert document["total_items"] == 4
    assert document["total_images"] == 4
    assert document["total_estimated_credits"] == 30
    job = document["jobs"][0]
    assert job == {
        "file": plan.file,
        "batch": "j",
        "items": 2,
        "images": 2,
        "estimated_credits": 15,
        "estimate_is_lower_bound": True,
        "budget": 7,
        "models": [
            {
                "model": "default",
                "items": 1,
                "images": 1,
                "estimated_credits": 5,
                "exact": False,
                "basis": "lower_bound",
                "seen_on": None,
                "kinds": [lower_bound_kind(5)],
            },
            {
                "model": "krea-2",
                "items": 1,
                "images": 1,
                "estimated_credits": 10,
                "exact": False,
                "basis": "lower_bound",
                "seen_on": None,
                "kinds": [lower_bound_kind(10)],
            },
        ],
        "entries": [],  # no templated entry
    }


def test_user_text_is_never_rich_markup(load_text: LoadText, catalog: Catalog) -> None:
    plan = build_plan(load_text("name: '[bold]x :smile:'\nprompts:\n  - a\n"), catalog)
    assert "[bold]x :smile:" in rendered([plan])
