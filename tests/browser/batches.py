"""Real batches for the gallery and review tests: job files run by the real
CLI against the sandbox, with renders that fail and answers that get lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from batcher.ledger import Ledger
from batcher.sandbox import SandboxConfig, running_sandbox

# Stands in for templates (being added to job files): the variables each
# prompt's item would carry in its manifest line.
VARIABLES = {
    "A red bicycle on a beach": {"color": "red", "object": "bicycle"},
    "A teal bicycle on a beach": {"color": "teal", "object": "bicycle"},
    "A red kettle on a beach": {"color": "red", "object": "kettle"},
    "A teal kettle on a beach": {"color": "teal", "object": "kettle"},
    "A red lamp on a beach": {"color": "red", "object": "lamp"},
    "A teal lamp on a beach": {"color": "teal", "object": "lamp"},
}
PROMPTS: list[dict[str, Any]] = [
    {"prompt": "A red bicycle on a beach"},
    {"prompt": "A teal bicycle on a beach", "image_count": 2},
    {"prompt": "A red kettle on a beach", "model": "flux-schnell", "aspect_ratio": "16:9"},
    {"prompt": "A teal kettle on a beach", "model": "flux-schnell"},
    {"prompt": "A red lamp on a beach", "aspect_ratio": "9:16"},
    {"prompt": "A teal lamp on a beach", "model": "qwen-image-2.1", "image_count": 2},
    {"prompt": "A storm over a lighthouse, oil painting", "model": "flux-schnell"},
    {"prompt": "A bowl of ramen, studio food photography"},
    {"prompt": "A watercolor map of an imaginary archipelago", "model": "krea-2"},
    {"prompt": "Isometric tiny kitchen, soft morning light", "aspect_ratio": "16:9"},
    {"prompt": "A dragon made of autumn leaves"},
    {"prompt": "Seamless pattern of lemons and leaves", "model": "flux-schnell"},
    {"prompt": "A chrome robot portrait", "model": "seedream-v4"},  # not for a free account
]
REDO_PROMPT = "A red bicycle on a beach, sharper"
SEED = 5


@dataclass(frozen=True)
class BuiltBatch:
    name: str
    db_url: str
    out: Path
    charged: int  # what the sandbox's journal says, for this batch
    refunded: int


def batcher(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("MAGIC_HOUR_", "BATCHER_"))
    }
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "batcher", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def build_batch(folder: Path, *, name: str = "morning") -> BuiltBatch:
    """A batch with complete, failed (render error, refunded) and unconfirmed
    (answer lost) items, variables in its manifest, and one rerun of a rejected
    image linked to the item it redoes."""
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.yaml"
    db_url = f"sqlite:///{folder / 'ledger.db'}"
    out = folder / "out"
    defaults = {"model": "z-image-turbo", "resolution": "640px", "image_count": 1}
    # One request at a time, so the seeded faults always hit the same items.
    config = SandboxConfig(
        render_seconds=0.02, render_error_rate=0.2, drop_rate=0.1, seed=SEED, tier="free"
    )
    prompts = [*PROMPTS, {"prompt": REDO_PROMPT}]
    job.write_text(yaml.safe_dump({"name": name, "defaults": defaults, "prompts": prompts}))
    with running_sandbox(config) as sandbox:
        run = batcher(
            "run",
            str(job),
            *("--base-url", sandbox.base_url, "--db", db_url, "--out", str(out)),
            *("--render-retries", "0", "--no-preflight", "--concurrency", "1", "--no-gallery"),
            env={"MAGIC_HOUR_API_KEY": sandbox.key},
        )
        assert run.returncode == 1, run.stderr  # some failed or in doubt, as meant
        journal = sandbox.journal()
    with Ledger.open(db_url) as ledger:
        batch = ledger.get_batch(name)
        assert batch is not None
        items = {item.prompt: item for item in ledger.items(batch.id)}
        states = sorted(item.state for item in items.values())
        assert states.count("failed") >= 2 and states.count("unconfirmed") >= 1, states
        old, new = items[PROMPTS[0]["prompt"]], items[REDO_PROMPT]
        assert old.state == new.state == "complete", (old.state, new.state)
        ledger.record_review(batch.id, old.key, 0, "reject", "the wheel is bent")
        ledger.set_redo_of({new.id: old.id})
        ours = {item.project_name for item in items.values()}
    add_variables(out / "manifest.jsonl")
    charged = sum(e.credits_charged for e in journal if e.name in ours)
    refunded = sum(e.credits_refunded for e in journal if e.name in ours)
    return BuiltBatch(name, db_url, out, charged, refunded)


def add_variables(manifest: Path) -> None:
    """Give each line the `vars` its prompt's template would have produced."""
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for line in lines:
        line["vars"] = VARIABLES.get(line["prompt"], {})
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
