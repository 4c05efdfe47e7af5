"""The ledger: all of batcher's SQL, behind one facade.

    from batcher.ledger import Ledger, BatchRecord, BeginSend, ...

`Ledger` (facade.py) is the only way in; it hands out the value objects of
values.py and takes the runner's operations (`BeginSend`, `Created`, ...).
`LedgerWriter` (writer.py) group-commits those operations for async code.
The schema is declared in models.py and migrated by migrate.py.
"""

from batcher.ledger.engine import DEFAULT_BUSY_TIMEOUT_S, display_url
from batcher.ledger.facade import Ledger
from batcher.ledger.kinds import Kind, KindItems, SeenPrice
from batcher.ledger.models import utcnow
from batcher.ledger.reviews import (
    VERDICTS,
    ItemCredits,
    ReviewCounts,
    ReviewedImage,
    ReviewRecord,
)
from batcher.ledger.transactions import Clock
from batcher.ledger.values import (
    FAILURE_DOWNLOAD,
    FAILURE_LOST,
    FAILURE_REFUSED,
    FAILURE_RENDER,
    FAILURE_TRANSIENT,
    GROUP_KEYS,
    STATES,
    BatchRecord,
    BatchSummary,
    BeginSend,
    ChargeSeen,
    Created,
    CreditGroup,
    CreditSnapshot,
    CreditWindow,
    Demand,
    DoubtfulItem,
    GroupValue,
    ItemRecord,
    KnownProject,
    LedgerOp,
    RecoveryCounts,
    ReleaseClaims,
    RenderFinished,
    RequeueCounts,
    SavedFile,
    SendFailed,
    SyncResult,
    WorkerRecord,
)
from batcher.ledger.webhooks import StoredEvent, WebhookCounts
from batcher.ledger.writer import LedgerWriter

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_S",
    "FAILURE_DOWNLOAD",
    "FAILURE_LOST",
    "FAILURE_REFUSED",
    "FAILURE_RENDER",
    "FAILURE_TRANSIENT",
    "GROUP_KEYS",
    "STATES",
    "VERDICTS",
    "BatchRecord",
    "BatchSummary",
    "BeginSend",
    "ChargeSeen",
    "Clock",
    "Created",
    "CreditGroup",
    "CreditSnapshot",
    "CreditWindow",
    "Demand",
    "DoubtfulItem",
    "GroupValue",
    "ItemCredits",
    "ItemRecord",
    "Kind",
    "KindItems",
    "KnownProject",
    "Ledger",
    "LedgerOp",
    "LedgerWriter",
    "RecoveryCounts",
    "ReleaseClaims",
    "RenderFinished",
    "RequeueCounts",
    "ReviewCounts",
    "ReviewRecord",
    "ReviewedImage",
    "SavedFile",
    "SeenPrice",
    "SendFailed",
    "StoredEvent",
    "SyncResult",
    "WebhookCounts",
    "WorkerRecord",
    "display_url",
    "utcnow",
]
