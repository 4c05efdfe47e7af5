"""Templates and matrices: expansion counts and order, zip, matrix settings against
the catalog, vars on items, key stability, max_items, and streaming."""

from __future__ import annotations

import gc
import itertools
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from batcher.errors import JobFileError
from batcher.jobfile import DEFAULT_MAX_ITEMS, JobItem, JobSpec, load_job
from batcher.jobfile.catalog import Catalog
from batcher.jobfile.items import identity_digest, item_key

LoadText = Callable[..., JobSpec]  # the fixtures of conftest.py
WriteJob = Callable[..., Path]


def items(job: JobSpec) -> list[JobItem]:
    return list(job.items())


def prompts(job: JobSpec) -> list[str]:
    return [item.prompt for item in job.items()]


def problems_of(load: LoadText, text: str, files: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(JobFileError) as caught:
        load(text, files)
    return [str(problem) for problem in caught.value.problems]


# -- expansion: counts and order


def test_the_product_follows_first_use_with_the_last_varying_fastest(
    load_text: LoadText,
) -> None:
    job = load_text(
        """\
        name: order
        vars:
          size: [small, large]
          color: [red, teal, black]
        prompts:
          - template: "A {color} {size} mug, {color} background"
        """
    )
    # color is used first: it varies slowest, although size is defined first.
    expected = [
        f"A {color} {size} mug, {color} background"
        for color, size in itertools.product(["red", "teal", "black"], ["small", "large"])
    ]
    assert prompts(job) == expected
    assert job.item_count == 6
    assert [item.vars for item in job.items()][:2] == [
        {"color": "red", "size": "small"},
        {"color": "red", "size": "large"},
    ]
    assert list(next(job.items()).vars) == ["color", "size"]  # in expansion order


def test_the_name_adds_its_variables_after_the_templates(load_text: LoadText) -> None:
    job = load_text(
        """\
        name: named
        vars: {a: [a1, a2], b: [b1, b2, b3], c: [c1, c2]}
        prompts:
          - template: "{b} then {a}"
            name: "{c}-{a}"
        """
    )
    found = [(item.vars["b"], item.vars["a"], item.vars["c"]) for item in job.items()]
    assert found == list(itertools.product(["b1", "b2", "b3"], ["a1", "a2"], ["c1", "c2"]))
    assert [item.settings.name for item in job.items()][:3] == ["c1-a1", "c2-a1", "c1-a2"]
    assert job.item_count == 12


def test_entries_expand_in_file_order_between_other_entries(load_text: LoadText) -> None:
    job = load_text(
        """\
        name: mixed
        vars: {x: ["1", "2"]}
        prompts:
          - first
          - template: "t{x}"
          - file: p.txt
          - template: "u{x}"
          - last
        """,
        {"p.txt": "from file\n"},
    )
    assert prompts(job) == ["first", "t1", "t2", "from file", "u1", "u2", "last"]
    assert [item.ordinal for item in job.items()] == list(range(7))
    lines = [item.line for item in job.items()]
    assert lines == [4, 5, 5, 1, 7, 7, 8]  # a template's items point at its entry
    assert job.item_count == 7


def test_a_template_without_variables_is_one_item_and_braces_escape(
    load_text: LoadText,
) -> None:
    job = load_text(
        """\
        name: braces
        vars: {v: [x]}
        prompts:
          - template: "plain {{literal}} braces"
          - template: "{{{v}}} and }}{{"
        """
    )
    assert prompts(job) == ["plain {literal} braces", "{x} and }{"]
    assert [dict(item.vars) for item in job.items()] == [{}, {"v": "x"}]


def test_values_are_pasted_as_written_never_templated_again(load_text: LoadText) -> None:
    job = load_text(
        """\
        name: paste
        vars: {v: ["{other}", "50% {{off}}"]}
        prompts:
          - template: "sale: {v}"
        """
    )
    assert prompts(job) == ["sale: {other}", "sale: 50% {{off}}"]


def test_a_plain_prompt_is_never_templated(load_text: LoadText) -> None:
    job = load_text(
        'name: plain\nvars: {v: [x]}\nprompts:\n  - prompt: "{v} {{ stays"\n    name: "{v}"\n'
    )
    [item] = items(job)
    assert item.prompt == "{v} {{ stays"
    assert item.settings.name == "{v}"
    assert item.vars == {}


def test_vars_files_skip_blank_and_comment_lines(load_text: LoadText) -> None:
    job = load_text(
        """\
        name: files
        vars:
          product: {file: lists/products.txt}
        prompts:
          - template: "{product} on white"
        """,
        {"lists/products.txt": "\ufeff# products\r\n  mug  \r\n\r\n   \r\n# not this\ntote bag"},
    )
    assert prompts(job) == ["mug on white", "tote bag on white"]


def test_entry_vars_are_local_and_shadow_the_top_level(load_text: LoadText) -> None:
    job = load_text(
        """\
        name: local
        vars: {color: [red, teal], thing: [mug]}
        prompts:
          - template: "{color} {thing}"
            vars: {color: [gold]}
          - template: "{color} {thing}"
        """
    )
    assert prompts(job) == ["gold mug", "red mug", "teal mug"]


def test_an_unused_local_variable_is_a_warning(load_text: LoadText) -> None:
    job = load_text(
        'name: w\nvars: {shared: [s]}\nprompts:\n  - template: "{a}"\n'
        "    vars:\n      a: [x]\n      b: [y]\n"
    )
    [warning] = job.warnings  # an unused top-level list is shared: no warning for it
    assert (warning.line, warning.field) == (7, "prompts[0].vars.b")
    assert warning.message == "not used by the template or the name"


# -- zip


def test_a_zip_group_is_one_axis_at_its_first_members_place(load_text: LoadText) -> None:
    job = load_text(
        """\
        name: zip
        vars:
          scene: [day, night]
        prompts:
          - template: "{hero} in the {scene} meets {villain}"
            vars:
              hero: [a knight, a robot, a cat]
              villain: [a dragon, a virus, a dog]
            zip: [hero, villain]
            name: "{hero} vs {villain}"
        """
    )
    found = [(i.vars["hero"], i.vars["villain"], i.vars["scene"]) for i in job.items()]
    pairs = [("a knight", "a dragon"), ("a robot", "a virus"), ("a cat", "a dog")]
    assert found == [(h, v, s) for (h, v), s in itertools.product(pairs, ["day", "night"])]
    assert job.item_count == 6
    assert [item.settings.name for item in job.items()][::2] == [
        "a knight vs a dragon",
        "a robot vs a virus",
        "a cat vs a dog",
    ]


def test_several_zip_groups(load_text: LoadText) -> None:
    job = load_text(
        """\
        name: zips
        vars: {a: [a1, a2], b: [b1, b2], c: [c1, c2, c3], d: [d1, d2, d3]}
        prompts:
          - template: "{c}{a}{b}{d}"
            zip: [[a, b], [c, d]]
        """
    )
    assert prompts(job) == [
        f"{c}{a}{b}{d}"
        for (c, d), (a, b) in itertools.product(
            [("c1", "d1"), ("c2", "d2"), ("c3", "d3")], [("a1", "b1"), ("a2", "b2")]
        )
    ]


# -- matrix


def test_matrix_settings_multiply_last_in_file_order_and_override(
    load_text: LoadText,
) -> None:
    job = load_text(
        """\
        name: matrix
        defaults: {model: qwen-image-2.1, aspect_ratio: "9:16", resolution: 640px}
        vars: {p: [mug, tote]}
        prompts:
          - template: "{p}"
            model: krea-2
            image_count: 1
            matrix:
              aspect_ratio: ["1:1", "16:9"]
              model: [flux-schnell, z-image-turbo]
        """
    )
    found = [(item.prompt, item.settings.aspect_ratio, item.settings.model) for item in job.items()]
    assert found == list(
        itertools.product(["mug", "tote"], ["1:1", "16:9"], ["flux-schnell", "z-image-turbo"])
    )
    first = next(job.items())
    assert first.vars == {"p": "mug", "aspect_ratio": "1:1", "model": "flux-schnell"}
    assert list(first.vars) == ["p", "aspect_ratio", "model"]
    # Entry and defaults settings still apply where the matrix says nothing.
    assert {item.settings.resolution for item in job.items()} == {"640px"}
    assert job.item_count == 8


def test_matrix_image_counts_are_numbers_in_vars(load_text: LoadText) -> None:
    job = load_text(
        """\
        name: counts
        defaults: {model: flux-schnell}
        prompts:
          - template: "a cat"
            matrix: {image_count: [1, 4]}
        """
    )
    assert [item.settings.image_count for item in job.items()] == [1, 4]
    assert [item.vars["image_count"] for item in job.items()] == [1, 4]


def test_a_matrix_meets_the_catalogs_rules_at_the_entry_named_with_the_combination(
    load_text: LoadText,
) -> None:
    problems = problems_of(
        load_text,
        """\
        name: rules
        defaults:
          resolution: 2k
        prompts:
          - template: "a map"
            matrix:
              model: [flux-schnell, krea-2]
              aspect_ratio: ["1:1", "16:9"]
          - template: "a dog"
            model: flux-2-klein
            matrix:
              image_count: [1, 2, 4]
        """,
    )
    path = problems[0].split(":", 1)[0]
    assert problems == [
        f"{path}:5: prompts[0].matrix: model 'krea-2' does not allow resolution '2k'; "
        f"allowed: 640px, 1k (matrix combination model: krea-2; resolution '2k' is set in "
        f"defaults at {path}:3)",
        f"{path}:9: prompts[1].matrix: model 'flux-2-klein' does not allow image_count 2; "
        f"allowed: 1 (matrix combination image_count: 2; model 'flux-2-klein' is set in "
        f"prompts[1] at {path}:10)",
        f"{path}:9: prompts[1].matrix: model 'flux-2-klein' does not allow image_count 4; "
        f"allowed: 1 (matrix combination image_count: 4; model 'flux-2-klein' is set in "
        f"prompts[1] at {path}:10)",
    ]


def test_matrix_values_a_model_allows_pass(load_text: LoadText) -> None:
    job = load_text(
        """\
        name: allowed
        prompts:
          - template: "a map"
            resolution: 1k
            matrix:
              model: [krea-2, nano-banana-2.1]
              image_count: [1]
        """
    )
    assert [item.settings.model for item in job.items()] == ["krea-2", "nano-banana-2.1"]


# -- keys


def keys_by_prompt(job: JobSpec) -> dict[tuple[str, str], str]:
    return {(item.prompt, item.settings.model): item.key for item in job.items()}


TEMPLATED = """\
name: stable
vars:
  color: [red, teal]
  product: {{file: products.txt}}
prompts:
  - template: "A {{color}} {{product}}"
    matrix:
      model: [{models}]
"""


def test_appending_a_value_adds_only_the_new_combinations(load_text: LoadText) -> None:
    before = keys_by_prompt(
        load_text(TEMPLATED.format(models="flux-schnell"), {"products.txt": "mug\ntote\n"})
    )
    assert len(before) == 4
    # A colour in the middle of the product order, a product, and a model.
    edited = TEMPLATED.format(models="flux-schnell, z-image-turbo").replace(
        "[red, teal]", "[red, teal, gold]"
    )
    after = keys_by_prompt(load_text(edited, {"products.txt": "mug\ntote\ncup\n"}))
    assert len(after) == 3 * 3 * 2
    assert {pair: after[pair] for pair in before} == before  # the old ones keep their keys
    assert set(after.values()) - set(before.values()) == {
        after[pair] for pair in after if pair not in before
    }


def test_template_keys_are_derived_as_for_any_prompt(load_text: LoadText) -> None:
    # The same prompt and settings written plainly and made by a template: one
    # identity, so the second is occurrence 1 of the first.
    job = load_text(
        'name: same\nvars: {c: [red]}\nprompts:\n  - "A red mug"\n  - template: "A {c} mug"\n'
    )
    plain, templated = items(job)
    identity = identity_digest("A red mug", plain.settings)
    assert plain.key == item_key("same", identity, 0)
    assert templated.key == item_key("same", identity, 1)


def test_items_are_the_same_on_every_pass(load_text: LoadText) -> None:
    job = load_text(
        'name: again\nvars: {a: [x, y], b: [z]}\nprompts:\n  - template: "{a}{b}"\n'
        "    matrix: {image_count: [1, 2]}\n"
    )
    assert items(job) == items(job)


# -- max_items


def big_job(count: int) -> str:
    values = ", ".join(f"v{n}" for n in range(count))
    return f'name: big\nvars:\n  v: [{values}]\nprompts:\n  - template: "{{v}}"\n'


def test_max_items_defaults_to_100000(load_text: LoadText) -> None:
    assert DEFAULT_MAX_ITEMS == 100_000
    a = ", ".join(f'"{n}"' for n in range(10))
    b = ", ".join(f'"{n}"' for n in range(10_000))
    text = (
        f"name: big\nvars:\n  a: [{a}]\n  b: [{b}]\n"
        'prompts:\n  - template: "{a}-{b}"\n  - one more\n'
    )
    problems = problems_of(load_text, text)
    path = problems[0].split(":", 1)[0]
    assert problems == [
        f"{path}:5: prompts: the job makes 100,001 items, more than max_items (100,000 by "
        "default); raise max_items: or pass --max-items if that many is meant",
        f"{path}:6: prompts[0]: makes 100,000 items (a 10 x b 10,000)",
    ]


def test_max_items_in_the_file_and_the_flag_over_it(write_job: WriteJob, catalog: Catalog) -> None:
    path = write_job(big_job(30) + "  - file: p.txt\nmax_items: 25\n", {"p.txt": "a\nb\nc\n"})
    with pytest.raises(JobFileError) as caught:
        load_job(path, catalog)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:4: prompts: the job makes 33 items, more than max_items (25, set at line 7); "
        "raise max_items: or pass --max-items if that many is meant",
        f"{path}:5: prompts[0]: makes 30 items (v 30)",
        f"{path}:6: prompts[1]: makes 3 items (the lines of {path.parent / 'p.txt'})",
    ]
    assert load_job(path, catalog, max_items=33).item_count == 33
    with pytest.raises(JobFileError, match=r"more than --max-items 32; pass a larger"):
        load_job(path, catalog, max_items=32)


def test_an_astronomical_product_is_counted_not_walked(
    write_job: WriteJob, catalog: Catalog
) -> None:
    values = "[" + ", ".join(f"x{n}" for n in range(100)) + "]"
    text = (
        "name: huge\nvars:\n"
        + "".join(f"  v{n}: {values}\n" for n in range(12))
        + "prompts:\n  - template: '"
        + " ".join(f"{{v{n}}}" for n in range(12))
        + "'\n    matrix: {model: [flux-schnell, qwen-image-2.1], image_count: [1, 2, 3, 4]}\n"
    )
    with pytest.raises(JobFileError) as caught:
        load_job(write_job(text), catalog)
    messages = [p.message for p in caught.value.problems]
    assert messages[0].startswith(f"the job makes {8 * 100**12:,} items")
    assert messages[1].startswith(f"makes {8 * 100**12:,} items (v0 100 x v1 100")
    assert messages[1].endswith("x model 2 x image_count 4)")


# -- streaming


def test_a_large_expansion_is_never_held(write_job: WriteJob, catalog: Catalog) -> None:
    padding = "in a misty watercolor forest at dawn, soft light " * 10  # 500 characters
    values = ", ".join(f"p{n}" for n in range(200))
    path = write_job(
        f"name: stream\nvars:\n  a: [{values}]\n  b: [{values}]\nprompts:\n"
        f'  - template: "{{a}} {{b}} {padding}"\n'
    )
    held = 200 * 200 * len(padding)  # what holding every prompt would cost, at least
    gc.collect()
    tracemalloc.start()
    try:
        job = load_job(path, catalog)
        retained_after_load = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        count = sum(1 for _ in job.items())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == job.item_count == 40_000
    assert retained_after_load < 0.01 * held  # the lists, not their product
    # Occurrence digests and one combination at a time, never every prompt.
    assert peak < 0.4 * held
