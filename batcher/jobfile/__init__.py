"""Stage 1 of the pipeline: job files in, validated items and plans out (pure).

`load_job` / `collect_jobs` read job files into `JobSpec`s whose `items()`
stream `JobItem`s; `build_plan` sums them into a `Plan` and `plan_document`
gives its `plan --json` shape. Nothing here prints, sends or writes; drawing a
plan belongs to `batcher.terminal.plan_view`.
"""

from batcher.jobfile.catalog import Catalog, load_catalog
from batcher.jobfile.items import ItemSettings, JobItem
from batcher.jobfile.loader import DEFAULT_MAX_ITEMS, collect_jobs, load_job
from batcher.jobfile.plan import ModelPlan, Plan, build_plan, plan_document
from batcher.jobfile.spec import JobSpec, TemplateSummary

__all__ = [
    "DEFAULT_MAX_ITEMS",
    "Catalog",
    "ItemSettings",
    "JobItem",
    "JobSpec",
    "ModelPlan",
    "Plan",
    "TemplateSummary",
    "build_plan",
    "collect_jobs",
    "load_catalog",
    "load_job",
    "plan_document",
]
