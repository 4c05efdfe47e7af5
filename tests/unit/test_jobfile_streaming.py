"""Memory: a job keeps about one copy of its inline prompts and none of its prompts files."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from batcher.jobfile.catalog import Catalog
from batcher.jobfile.loader import load_job

WriteJob = Callable[..., Path]  # the fixture of conftest.py

PROMPTS = 2_000
PROMPT_LENGTH = 1_000  # long prompts, so that their text dominates everything else


def prompt(index: int) -> str:
    return f"{index:06d} " + "a watercolor fox in a misty forest " * (PROMPT_LENGTH // 35)


@contextmanager
def traced() -> Iterator[list[int]]:
    """Yields [retained, peak] bytes, filled in when the block ends."""
    gc.collect()
    tracemalloc.start()
    figures: list[int] = []
    try:
        yield figures
        gc.collect()
        figures.extend(tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()


def test_inline_prompts_are_held_once_and_files_not_at_all(
    write_job: WriteJob, catalog: Catalog
) -> None:
    inline = "".join(f'  - "{prompt(n)}"\n' for n in range(PROMPTS))
    lines = "".join(prompt(PROMPTS + n) + "\n" for n in range(PROMPTS))
    path = write_job("name: big\nprompts:\n" + inline + "  - file: p.txt\n", {"p.txt": lines})
    text_size = len(lines)  # the inline text is as large

    with traced() as loading:
        job = load_job(path, catalog)
    retained, peak = loading
    assert job.item_count == 2 * PROMPTS
    # One copy of the inline text and small change per item; nothing of the file.
    assert retained < 1.3 * text_size
    assert peak < 5 * text_size  # the file's bytes, its node tree, a transient decode

    with traced() as iterating:
        count = sum(1 for _ in job.items())
    retained, peak = iterating
    assert count == 2 * PROMPTS
    assert retained < 0.05 * text_size
    # Occurrence digests and one line at a time, never the whole file.
    assert peak < 0.5 * text_size
