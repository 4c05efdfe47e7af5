"""batcher: bulk image generation against Magic Hour's AI Image Generator API.

Resumable, budgeted and audited: every item is recorded in a ledger before it
is sent, so no work is lost and nothing is paid twice.

The library API (batcher.library) is re-exported here:

    import batcher

    summary = batcher.run(["jobs/demo.yaml"], sandbox=True, concurrency=8)
    print(summary.exit_code, summary.states, summary.credits_net)

Names load on first use, so `import batcher` stays cheap: `batcher validate`
never pays for SQLAlchemy, httpx or uvicorn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from batcher.errors import (
    ApiError,
    AuthError,
    BadDownloadError,
    BatcherError,
    CatalogError,
    ConfigError,
    ConnectError,
    DownloadExpiredError,
    DownloadTooLargeError,
    InputError,
    JobFileError,
    LedgerBusyError,
    LedgerCorruptError,
    LedgerError,
    LedgerLostError,
    LedgerMissingError,
    LedgerReadOnlyError,
    LedgerVersionError,
    MalformedResponseError,
    NotAnImageError,
    OutputError,
    OutputFolderError,
    PreflightError,
    Problem,
    ResponseLostError,
    ReviewError,
    TransportError,
)
from batcher.settings import VERSION

__version__ = VERSION

if TYPE_CHECKING:
    from batcher.client.magic_hour import Account
    from batcher.jobfile.plan import ModelPlan, Plan
    from batcher.jobfile.results import JobCheck, PlanReport, Validation
    from batcher.library import (
        account,
        account_async,
        audit,
        audit_async,
        db_upgrade,
        items,
        items_async,
        plan,
        reconcile,
        reconcile_async,
        recover,
        recover_async,
        rerun,
        rerun_async,
        resume,
        resume_async,
        run,
        run_async,
        run_many,
        run_many_async,
        status,
        status_async,
        validate,
        worker,
        worker_async,
    )
    from batcher.reports.audit import AuditReport, AuditRow
    from batcher.reports.items import ItemsReport, ItemView
    from batcher.reports.reconcile import ReconcileReport
    from batcher.reports.status import BatchStatus, StatusReport, WorkerView
    from batcher.run.observer import RunObserver, RunProgress
    from batcher.run.recover import RecoverReport
    from batcher.run.rerun import RerunEntry, RerunPlan, RerunResult
    from batcher.run.summary import RunStats, RunSummary

# Public name -> the module that defines it, imported on first access.
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "validate",
            "plan",
            "run",
            "run_async",
            "run_many",
            "run_many_async",
            "resume",
            "resume_async",
            "worker",
            "worker_async",
            "rerun",
            "rerun_async",
            "status",
            "status_async",
            "items",
            "items_async",
            "audit",
            "audit_async",
            "reconcile",
            "reconcile_async",
            "recover",
            "recover_async",
            "account",
            "account_async",
            "db_upgrade",
        ),
        "batcher.library",
    ),
    "Account": "batcher.client.magic_hour",
    "Plan": "batcher.jobfile.plan",
    "ModelPlan": "batcher.jobfile.plan",
    "JobCheck": "batcher.jobfile.results",
    "PlanReport": "batcher.jobfile.results",
    "Validation": "batcher.jobfile.results",
    "AuditReport": "batcher.reports.audit",
    "AuditRow": "batcher.reports.audit",
    "ItemsReport": "batcher.reports.items",
    "ItemView": "batcher.reports.items",
    "ReconcileReport": "batcher.reports.reconcile",
    "RunStats": "batcher.run.summary",
    "RunSummary": "batcher.run.summary",
    "BatchStatus": "batcher.reports.status",
    "StatusReport": "batcher.reports.status",
    "WorkerView": "batcher.reports.status",
    "RunObserver": "batcher.run.observer",
    "RunProgress": "batcher.run.observer",
    "RecoverReport": "batcher.run.recover",
    "RerunEntry": "batcher.run.rerun",
    "RerunPlan": "batcher.run.rerun",
    "RerunResult": "batcher.run.rerun",
}

__all__ = [
    "Account",
    "ApiError",
    "AuditReport",
    "AuditRow",
    "AuthError",
    "BadDownloadError",
    "BatchStatus",
    "BatcherError",
    "CatalogError",
    "ConfigError",
    "ConnectError",
    "DownloadExpiredError",
    "DownloadTooLargeError",
    "InputError",
    "ItemView",
    "ItemsReport",
    "JobCheck",
    "JobFileError",
    "LedgerBusyError",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerLostError",
    "LedgerMissingError",
    "LedgerReadOnlyError",
    "LedgerVersionError",
    "MalformedResponseError",
    "ModelPlan",
    "NotAnImageError",
    "OutputError",
    "OutputFolderError",
    "Plan",
    "PlanReport",
    "PreflightError",
    "Problem",
    "ReconcileReport",
    "RecoverReport",
    "RerunEntry",
    "RerunPlan",
    "RerunResult",
    "ResponseLostError",
    "ReviewError",
    "RunObserver",
    "RunProgress",
    "RunStats",
    "RunSummary",
    "StatusReport",
    "TransportError",
    "Validation",
    "WorkerView",
    "__version__",
    "account",
    "account_async",
    "audit",
    "audit_async",
    "db_upgrade",
    "items",
    "items_async",
    "plan",
    "reconcile",
    "reconcile_async",
    "recover",
    "recover_async",
    "rerun",
    "rerun_async",
    "resume",
    "resume_async",
    "run",
    "run_async",
    "run_many",
    "run_many_async",
    "status",
    "status_async",
    "validate",
    "worker",
    "worker_async",
]


# `batcher.run` is the library call, but batcher/run/ is also the package of the
# pool: loading that package (as any import of its modules does) would bind it
# here as `run`. Load it now, cheaply (its __init__ is empty), and unbind it, so
# that `batcher.run` always reaches the function. `from batcher.run.x import y`
# goes through sys.modules and never looks at this attribute.
importlib.import_module("batcher.run")
del globals()["run"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batcher' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
