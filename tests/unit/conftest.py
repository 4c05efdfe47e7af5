"""Fixtures for unit tests: the packaged catalog and a helper that writes job files."""

from __future__ import annotations

import datetime
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from batcher.jobfile.catalog import Catalog, load_catalog
from batcher.jobfile.loader import JobSpec, load_job

WriteJob = Callable[..., Path]
LoadText = Callable[..., JobSpec]


@pytest.fixture
def today() -> datetime.date:
    """The date `load_text` fills `{date}` with."""
    return datetime.date(2026, 3, 14)


@pytest.fixture
def catalog(monkeypatch: pytest.MonkeyPatch) -> Catalog:
    monkeypatch.delenv("BATCHER_CATALOG", raising=False)
    return load_catalog()


@pytest.fixture
def write_job(tmp_path: Path) -> WriteJob:
    """write_job(yaml_text, {"prompts/x.txt": "..."}, name="job.yaml") -> the job's path."""

    def write(text: str, files: dict[str, str] | None = None, name: str = "job.yaml") -> Path:
        for relative, content in (files or {}).items():
            target = tmp_path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def load_text(write_job: WriteJob, catalog: Catalog, today: datetime.date) -> LoadText:
    """load_text(yaml_text, files=None, batch_name=None) -> a JobSpec, dated `today`."""

    def load(
        text: str, files: dict[str, str] | None = None, batch_name: str | None = None
    ) -> JobSpec:
        return load_job(write_job(text, files), catalog, batch_name=batch_name, today=today)

    return load
