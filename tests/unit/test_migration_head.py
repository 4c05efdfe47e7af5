"""Commands check a ledger's schema against migrate.HEAD without importing
Alembic: the constant must be the scripts' head, or a new migration would be
skipped."""

from __future__ import annotations

import subprocess
import sys

from batcher.ledger import migrate


def test_the_head_known_without_alembic_is_the_scripts_head() -> None:
    assert migrate.head_revision() == migrate.scripts_head()


def test_opening_a_ledger_at_its_head_does_not_import_alembic(tmp_path: object) -> None:
    code = (
        "import sys; from batcher.ledger import Ledger; "
        f"url = 'sqlite:///{tmp_path}/l.db'; Ledger.open(url).close(); "
        "[sys.modules.pop(m) for m in list(sys.modules) if m.startswith('alembic')]; "
        "Ledger.open(url).close(); print('alembic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
