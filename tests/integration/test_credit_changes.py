"""Charges that change after the create, on SQLite and PostgreSQL: a charge the
create's answer did not tell, a surcharge, a refund, each one credit row
(ChargeSeen), written once however often it is seen, and reservations freed."""

from __future__ import annotations

from datetime import timedelta

from batcher.jobfile.items import ItemSettings, JobItem
from batcher.ledger import BeginSend, ChargeSeen, Created, Ledger, utcnow
from batcher.reports import audit

SETTINGS = ItemSettings("z-image-turbo", "1k", "1:1", "general", 1)


def test_each_change_of_a_charge_is_one_credit_row(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as ledger:
        batch, _ = ledger.open_batch("b", job_path=None, job_hash=None, budget=100, settings={})
        ledger.sync_items(
            batch.id,
            [
                JobItem(
                    0, "k", "p", ItemSettings("z-image-turbo", "1k", "1:1", "general", 1), "j", 1
                )
            ],
            estimate=lambda _s: (5, True),
            project_name=lambda item: item.key,
        )
        [item] = ledger.claim(
            batch.id, "w", states=["pending"], limit=1, lease_until=utcnow() + timedelta(hours=1)
        )
        assert ledger.apply([BeginSend(item.id, batch.id, "w", 5, True)]) == [True]
        # The create's answer had an id and no usable charge: submitted, still reserved.
        ledger.apply([Created(item.id, batch.id, "p1", None, 5, keep_claim=True, note="n")])
        [known] = ledger.known_projects(batch.id)
        assert (known.project_id, known.charge_known, known.charged) == ("p1", False, 0)
        record = ledger.get_batch_by_id(batch.id)
        assert (record.credits_net, record.credits_reserved) == (0, 5)

        def seen(credits: int) -> int:
            return ledger.record_charge_seen(ChargeSeen(item.id, batch.id, "p1", credits))

        assert seen(5) == 5  # the charge, learnt from a poll; the reservation freed
        record = ledger.get_batch_by_id(batch.id)
        assert (record.credits_net, record.credits_reserved) == (5, 0)
        assert seen(5) == 0
        assert ledger.apply([ChargeSeen(item.id, batch.id, "p1", 50)]) == [45]  # a surcharge
        assert seen(50) == 0  # seen again (reconcile after the run): nothing twice
        assert seen(20) == -30  # a partial refund
        assert seen(0) == -20  # and the rest
        [known] = ledger.known_projects(batch.id)
        assert (known.charged, known.refunded, known.charge_known) == (50, 50, True)
        [summary] = ledger.batch_summaries()
        assert (summary.credits_charged, summary.credits_refunded, summary.credits_net) == (
            50,
            50,
            0,
        )
        assert ledger.get_batch_by_id(batch.id).credits_net == 0
        totals = audit.build_audit(ledger, audit.AuditQuery()).totals
        assert (totals.credits_charged, totals.credits_refunded, totals.failures) == (50, 50, 1)
