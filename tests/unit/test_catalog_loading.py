"""The catalog as job validation uses it: packaged, replaced, broken."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from batcher.errors import CatalogError, JobFileError
from batcher.jobfile.catalog import load_catalog, packaged_catalog_path
from batcher.jobfile.loader import load_job

WriteJob = Callable[..., Path]  # the fixture of conftest.py


def packaged_data() -> dict[str, object]:
    data = yaml.safe_load(packaged_catalog_path().read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def write_catalog(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_the_packaged_catalog_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHER_CATALOG", raising=False)
    catalog = load_catalog()
    assert catalog.default_model == "default"
    assert "z-image-turbo" in catalog.models
    assert catalog.quality_modes == {"standard": "z-image-turbo", "pro": "seedream-v4"}
    assert catalog.orientations["landscape"] == "16:9"
    assert len(catalog.tools) == 35
    assert catalog.models["seedream"].deprecated
    assert catalog.deprecated_resolutions == {"auto"}


def test_a_replacement_catalog_changes_what_validates(tmp_path: Path, write_job: WriteJob) -> None:
    data = packaged_data()
    models = data["models"]
    assert isinstance(models, dict)
    models["brand-new"] = {
        "credits_per_image": 7,
        "resolutions": ["1k"],
        "tiers": ["free"],
        "image_counts": [1, 2],
    }
    del models["krea-2"]
    replaced = load_catalog(write_catalog(tmp_path / "catalog.yaml", data))
    job = write_job("name: c\nprompts:\n  - prompt: a\n    model: brand-new\n")
    [item] = load_job(job, replaced).items()
    assert item.settings.model == "brand-new"
    with pytest.raises(JobFileError, match="unknown model 'krea-2'"):
        load_job(write_job("name: c\nprompts:\n  - prompt: a\n    model: krea-2\n"), replaced)


def test_the_environment_names_the_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = packaged_data()
    data["default_tool"] = "ai-art-generator"
    path = write_catalog(tmp_path / "env-catalog.yaml", data)
    monkeypatch.setenv("BATCHER_CATALOG", str(path))
    assert load_catalog().default_tool == "ai-art-generator"
    assert load_catalog(packaged_catalog_path()).default_tool == "general"  # a flag wins


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such catalog file"),
        ("models: [unclosed\n", "not valid YAML at line 2"),
        ("- a list\n", "must be a mapping"),
        ("tiers: [free]\nresolutions: [1k]\nmodels: {}\n", "models: at least one model"),
        (b"\xff\xfe not utf-8", "is not UTF-8 text"),
    ],
)
def test_bad_catalog_files(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    path = tmp_path / "catalog.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(CatalogError, match=message) as caught:
        load_catalog(path)
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith(str(path))


def test_a_catalog_default_model_must_exist(tmp_path: Path) -> None:
    data = packaged_data()
    data["default_model"] = "missing"
    with pytest.raises(CatalogError, match="default_model"):
        load_catalog(write_catalog(tmp_path / "catalog.yaml", data))


def test_a_catalog_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="is a folder"):
        load_catalog(tmp_path)
