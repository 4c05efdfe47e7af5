"""The model catalog: which models, resolutions, image counts and tiers the API
accepts and what they cost. It is data (a packaged YAML file a user may
replace), loaded once into immutable values; the rules over it are pure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml

from batcher.errors import CatalogError
from batcher.jobfile.items import ItemSettings

_T = TypeVar("_T")

CATALOG_ENV = "BATCHER_CATALOG"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    credits_per_image: int  # the "from" price, at the model's lowest resolution
    resolutions: tuple[str, ...]  # lowest first
    tiers: frozenset[str]
    image_counts: tuple[int, ...]
    deprecated: bool = False
    server_picks: bool = False  # `default`: the server chooses the real model
    resolution_multipliers: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @property
    def lowest_resolution(self) -> str:
        return self.resolutions[0]


@dataclass(frozen=True, slots=True)
class Estimate:
    """Credits an item is expected to cost. `exact` is False for a lower bound."""

    credits: int
    exact: bool


@dataclass(frozen=True, slots=True)
class Catalog:
    path: str
    tiers: tuple[str, ...]
    resolutions: tuple[str, ...]  # ordered lowest to highest
    deprecated_resolutions: frozenset[str]
    aspect_ratios: tuple[str, ...]
    default_aspect_ratio: str
    tools: frozenset[str]
    default_tool: str
    quality_modes: Mapping[str, str]
    orientations: Mapping[str, str]
    default_model: str
    models: Mapping[str, ModelInfo]

    @property
    def accepted_resolutions(self) -> tuple[str, ...]:
        return self.resolutions + tuple(sorted(self.deprecated_resolutions))

    def model(self, name: str) -> ModelInfo | None:
        return self.models.get(name)

    def model_problems(
        self, model: str, resolution: str | None, image_count: int
    ) -> list[tuple[str, str]]:
        """Per-model rules as (field, message) pairs; empty when the combination is allowed."""
        info = self.models.get(model)
        if info is None:
            return [("model", f"unknown model {model!r}; known: {', '.join(self.models)}")]
        problems: list[tuple[str, str]] = []
        if (
            resolution is not None
            and resolution not in self.deprecated_resolutions
            and resolution not in info.resolutions
        ):
            problems.append(
                (
                    "resolution",
                    f"model {model!r} does not allow resolution {resolution!r}; "
                    f"allowed: {', '.join(info.resolutions)}",
                )
            )
        if image_count not in info.image_counts:
            problems.append(
                (
                    "image_count",
                    f"model {model!r} does not allow image_count {image_count}; "
                    f"allowed: {', '.join(str(n) for n in info.image_counts)}",
                )
            )
        return problems

    def tier_problem(self, settings: ItemSettings, tier: str) -> str | None:
        """Why an account of `tier` may not run these settings, or None if it may."""
        info = self.models.get(settings.model)
        if info is None:
            return f"unknown model {settings.model!r}"
        if tier not in info.tiers:
            # In the catalog's tier order (free, creator, pro...), not alphabetical.
            needed = [name for name in self.tiers if name in info.tiers]
            return f"model {settings.model!r} needs tier {' or '.join(needed)}"
        resolution = settings.resolution
        if (
            tier == self.tiers[0]
            and resolution is not None
            and resolution not in self.deprecated_resolutions
            and resolution != info.lowest_resolution
        ):
            return (
                f"tier {tier!r} gets only the lowest resolution of {settings.model!r} "
                f"({info.lowest_resolution}), not {resolution}"
            )
        return None

    def estimate(self, settings: ItemSettings) -> Estimate:
        """From-price x image_count, and whether that is exact or only a lower bound."""
        info = self.models.get(settings.model)
        if info is None:
            raise KeyError(settings.model)
        exact = True
        price: float = info.credits_per_image
        if info.server_picks:
            default = self.models.get(self.default_model, info)
            price = default.credits_per_image
            exact = False
        resolution = settings.resolution
        if resolution is None or resolution in self.deprecated_resolutions:
            exact = False
        elif resolution in info.resolution_multipliers:
            price *= info.resolution_multipliers[resolution]
        elif resolution != info.lowest_resolution:
            exact = False
        # Round away float noise first so 10 x 1.1 is 11, as the API charges, not 12.
        return Estimate(credits=math.ceil(round(price * settings.image_count, 6)), exact=exact)


def packaged_catalog_path() -> Path:
    return Path(str(resources.files("batcher") / "data" / "catalog.yaml"))


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load the catalog named by `path`, else $BATCHER_CATALOG, else the packaged one."""
    chosen = path if path is not None else os.environ.get(CATALOG_ENV) or None
    resolved = Path(chosen) if chosen is not None else packaged_catalog_path()
    return _load_cached(str(resolved))


@lru_cache(maxsize=8)
def _load_cached(path: str) -> Catalog:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except IsADirectoryError:
        raise CatalogError(path, "is a folder, not a catalog file") from None
    except FileNotFoundError:
        raise CatalogError(path, "no such catalog file") from None
    except UnicodeDecodeError:
        raise CatalogError(path, "is not UTF-8 text") from None
    except OSError as exc:
        raise CatalogError(path, f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 - a safe loader, C if available
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise CatalogError(path, f"not valid YAML{where}") from None
    return _parse(path, data)


def _loader() -> type[yaml.SafeLoader]:
    loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return loader


def _parse(path: str, data: Any) -> Catalog:
    if not isinstance(data, dict):
        raise CatalogError(path, "must be a mapping with `models` and the API's enums")
    reader = _Reader(path, data)
    tiers = reader.str_list("tiers")
    resolutions = reader.str_list("resolutions")
    models_raw = reader.get("models", dict)
    if not models_raw:
        raise CatalogError(path, "models: at least one model is needed")
    models: dict[str, ModelInfo] = {}
    for name, raw in models_raw.items():
        models[str(name)] = _parse_model(path, str(name), raw, tiers, resolutions)
    default_model = reader.get("default_model", str)
    if default_model not in models:
        raise CatalogError(path, f"default_model: {default_model!r} is not among the models")
    aspect_ratios = reader.str_list("aspect_ratios")
    default_aspect_ratio = reader.get("default_aspect_ratio", str)
    if default_aspect_ratio not in aspect_ratios:
        raise CatalogError(path, "default_aspect_ratio: not among aspect_ratios")
    tools = reader.str_list("tools")
    default_tool = reader.get("default_tool", str)
    if default_tool not in tools:
        raise CatalogError(path, "default_tool: not among tools")
    quality_modes = reader.str_map("quality_modes")
    for mode, model in quality_modes.items():
        if model not in models:
            raise CatalogError(path, f"quality_modes: {mode} maps to unknown model {model!r}")
    orientations = reader.str_map("orientations")
    for orientation, ratio in orientations.items():
        if ratio not in aspect_ratios:
            raise CatalogError(path, f"orientations: {orientation} maps to unknown {ratio!r}")
    return Catalog(
        path=path,
        tiers=tuple(tiers),
        resolutions=tuple(resolutions),
        deprecated_resolutions=frozenset(reader.str_list("deprecated_resolutions", required=False)),
        aspect_ratios=tuple(aspect_ratios),
        default_aspect_ratio=default_aspect_ratio,
        tools=frozenset(tools),
        default_tool=default_tool,
        quality_modes=MappingProxyType(quality_modes),
        orientations=MappingProxyType(orientations),
        default_model=default_model,
        models=MappingProxyType(models),
    )


def _parse_model(
    path: str, name: str, raw: Any, tiers: list[str], resolutions: list[str]
) -> ModelInfo:
    where = f"models.{name}"
    if not isinstance(raw, dict):
        raise CatalogError(path, f"{where}: must be a mapping")
    reader = _Reader(path, raw, prefix=where + ".")
    price = reader.get("credits_per_image", int)
    if price < 0:
        raise CatalogError(path, f"{where}.credits_per_image: must not be negative")
    model_resolutions = reader.str_list("resolutions")
    unknown = [r for r in model_resolutions if r not in resolutions]
    if unknown:
        raise CatalogError(path, f"{where}.resolutions: unknown {', '.join(unknown)}")
    model_resolutions.sort(key=resolutions.index)
    model_tiers = reader.str_list("tiers")
    if any(t not in tiers for t in model_tiers):
        raise CatalogError(path, f"{where}.tiers: must be among {', '.join(tiers)}")
    counts = reader.get("image_counts", list)
    if not counts or not all(type(c) is int and 1 <= c <= 16 for c in counts):
        raise CatalogError(path, f"{where}.image_counts: must be whole numbers from 1 to 16")
    multipliers_raw = raw.get("resolution_multipliers", {})
    if not isinstance(multipliers_raw, dict) or not all(
        k in model_resolutions and isinstance(v, int | float) and v > 0
        for k, v in multipliers_raw.items()
    ):
        raise CatalogError(
            path, f"{where}.resolution_multipliers: must map the model's resolutions to factors"
        )
    return ModelInfo(
        name=name,
        credits_per_image=price,
        resolutions=tuple(model_resolutions),
        tiers=frozenset(model_tiers),
        image_counts=tuple(sorted(counts)),
        deprecated=bool(raw.get("deprecated", False)),
        server_picks=bool(raw.get("server_picks", False)),
        resolution_multipliers=MappingProxyType(
            {str(k): float(v) for k, v in multipliers_raw.items()}
        ),
    )


class _Reader:
    """Typed access to a catalog mapping with errors that name the key."""

    def __init__(self, path: str, data: dict[Any, Any], prefix: str = "") -> None:
        self.path = path
        self.data = data
        self.prefix = prefix

    def get(self, key: str, kind: type[_T]) -> _T:
        if key not in self.data:
            raise CatalogError(self.path, f"{self.prefix}{key}: missing")
        value = self.data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CatalogError(self.path, f"{self.prefix}{key}: must be a {kind.__name__}")
        return value

    def str_list(self, key: str, *, required: bool = True) -> list[str]:
        if not required and key not in self.data:
            return []
        value = self.get(key, list)
        if not value or not all(isinstance(v, str) and v for v in value):
            raise CatalogError(self.path, f"{self.prefix}{key}: must be a list of names")
        return [str(v) for v in value]

    def str_map(self, key: str) -> dict[str, str]:
        value = self.get(key, dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise CatalogError(self.path, f"{self.prefix}{key}: must map names to names")
        return {str(k): str(v) for k, v in value.items()}
