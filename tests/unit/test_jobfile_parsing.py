"""Parsing job files: entry forms, prompts files, precedence, deprecations, placeholders."""

from __future__ import annotations

import datetime
import hashlib
import inspect
from collections.abc import Callable
from pathlib import Path

import pytest

from batcher.errors import JobFileError, Problem
from batcher.jobfile.catalog import Catalog
from batcher.jobfile.items import ItemSettings, JobItem
from batcher.jobfile.loader import JobSpec, load_job

LoadText = Callable[..., JobSpec]  # the fixtures of conftest.py
WriteJob = Callable[..., Path]


def only(job: JobSpec) -> JobItem:
    [item] = list(job.items())
    return item


def problems_of(load: LoadText, text: str, files: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(JobFileError) as caught:
        load(text, files)
    return [str(problem) for problem in caught.value.problems]


def test_a_bare_string_gets_the_catalog_defaults(load_text: LoadText) -> None:
    job = load_text("name: b\nprompts:\n  - A red bicycle\n")
    item = only(job)
    assert item.prompt == "A red bicycle"
    assert item.settings == ItemSettings(
        model="default", resolution=None, aspect_ratio="1:1", tool="general", image_count=1
    )
    assert (item.ordinal, item.line) == (0, 3)
    assert item.path.endswith("job.yaml")


def test_every_entry_form_in_file_order(load_text: LoadText) -> None:
    job = load_text(
        """\
        name: forms
        prompts:
          - "inline one"
          - prompt: "mapping two"
            image_count: 2
          - file: prompts/three.txt
          - file: prompts/four.csv
          - inline five
        """,
        {"prompts/three.txt": "three a\nthree b\n", "prompts/four.csv": "prompt\nfour\n"},
    )
    items = list(job.items())
    assert [i.prompt for i in items] == [
        "inline one",
        "mapping two",
        "three a",
        "three b",
        "four",
        "inline five",
    ]
    assert [i.ordinal for i in items] == list(range(6))
    assert [Path(i.path).name for i in items] == [
        "job.yaml",
        "job.yaml",
        "three.txt",
        "three.txt",
        "four.csv",
        "job.yaml",
    ]
    assert [i.line for i in items] == [3, 4, 1, 2, 2, 8]
    assert job.item_count == 6


def test_prompt_text_is_trimmed_and_block_scalars_keep_inner_lines(load_text: LoadText) -> None:
    job = load_text('name: t\nprompts:\n  - "  padded  "\n  - |\n    two\n    lines\n')
    assert [i.prompt for i in job.items()] == ["padded", "two\nlines"]


def test_text_prompts_file_skips_comments_and_blank_lines_counting_lines(
    load_text: LoadText,
) -> None:
    text = (
        "\ufeff# header comment\r\nfirst\r\n\r\n   \r\n  second  \r\n  # indented comment\r\nthird"
    )
    job = load_text("name: t\nprompts:\n  - file: p.txt\n", {"p.txt": text})
    assert [(i.prompt, i.line) for i in job.items()] == [
        ("first", 2),
        ("second", 5),
        ("third", 7),
    ]


def test_csv_columns_override_and_empty_cells_inherit(load_text: LoadText) -> None:
    csv_text = (
        "prompt,model,resolution,aspect_ratio,tool,image_count,name\n"
        '"Mug, sage green",,,,,,\n'
        '"A two-line\nprompt",flux-schnell,1k,9:16,ai-photo-generator,4,two-lines\n'
        "\n"
        "Tote bag,,,,,2,\n"
    )
    job = load_text(
        """\
        name: csv
        defaults:
          model: z-image-turbo
          resolution: 640px
        prompts:
          - file: rows.csv
            aspect_ratio: "16:9"
        """,
        {"rows.csv": csv_text},
    )
    items = list(job.items())
    assert [(i.prompt, i.line) for i in items] == [
        ("Mug, sage green", 2),
        ("A two-line\nprompt", 3),
        ("Tote bag", 6),
    ]
    assert items[0].settings == ItemSettings("z-image-turbo", "640px", "16:9", "general", 1)
    assert items[1].settings == ItemSettings(
        "flux-schnell", "1k", "9:16", "ai-photo-generator", 4, name="two-lines"
    )
    assert items[2].settings == ItemSettings("z-image-turbo", "640px", "16:9", "general", 2)


def test_csv_columns_may_come_in_any_order_and_only_prompt_is_required(
    load_text: LoadText,
) -> None:
    job = load_text(
        "name: c\nprompts:\n  - file: p.CSV\n", {"p.CSV": "image_count,prompt\n3,A\n,B\n"}
    )
    assert [(i.prompt, i.settings.image_count) for i in job.items()] == [("A", 3), ("B", 1)]


def test_settings_precedence_prompt_over_file_over_defaults_over_catalog(
    load_text: LoadText,
) -> None:
    job = load_text(
        """\
        name: layers
        defaults:
          model: z-image-turbo
          resolution: 1k
          tool: ai-art-generator
        prompts:
          - file: p.txt
            resolution: 640px
            aspect_ratio: "9:16"
          - prompt: entry
            resolution: 2k
            image_count: 3
          - bare
        """,
        {"p.txt": "from file\n"},
    )
    from_file, entry, bare = (item.settings for item in job.items())
    assert from_file == ItemSettings("z-image-turbo", "640px", "9:16", "ai-art-generator", 1)
    assert entry == ItemSettings("z-image-turbo", "2k", "1:1", "ai-art-generator", 3)
    assert bare == ItemSettings("z-image-turbo", "1k", "1:1", "ai-art-generator", 1)


def test_csv_row_over_file_entry(load_text: LoadText) -> None:
    job = load_text(
        "name: c\nprompts:\n  - file: p.csv\n    model: flux-schnell\n    image_count: 2\n",
        {"p.csv": "prompt,image_count\nA,\nB,4\n"},
    )
    assert [(i.settings.model, i.settings.image_count) for i in job.items()] == [
        ("flux-schnell", 2),
        ("flux-schnell", 4),
    ]


def test_unquoted_aspect_ratio_is_not_sexagesimal(load_text: LoadText) -> None:
    job = load_text("name: r\ndefaults:\n  aspect_ratio: 16:9\nprompts:\n  - a\n")
    assert only(job).settings.aspect_ratio == "16:9"


def test_yaml_typing_follows_the_source_text(load_text: LoadText) -> None:
    # YAML 1.1 would read a date, the int 1, and the float 1000.0 (from 1e3) here.
    job = load_text("name: 2026-03-14\nprompts:\n  - 0x1\n  - null island\n  - 1e3 stars\n")
    assert job.name == "2026-03-14"
    assert [i.prompt for i in job.items()] == ["0x1", "null island", "1e3 stars"]


def test_yes_and_no_are_booleans_and_need_quotes_as_text(load_text: LoadText) -> None:
    [problem] = problems_of(load_text, "name: no\nprompts:\n  - a\n")
    assert problem.endswith(
        "job.yaml:1: name: must be text (the batch name), not the boolean no "
        "(put it in quotes to mean the text)"
    )
    assert load_text("name: 'no'\nprompts:\n  - a\n").name == "no"


def test_deprecated_quality_mode_and_orientation_map_with_warnings(load_text: LoadText) -> None:
    job = load_text(
        """\
        name: legacy
        defaults:
          quality_mode: pro
          orientation: portrait
        prompts:
          - a
          - prompt: b
            quality_mode: standard
            model: flux-schnell
            orientation: landscape
        """
    )
    a, b = (item.settings for item in job.items())
    assert (a.model, a.aspect_ratio) == ("seedream-v4", "9:16")
    assert (b.model, b.aspect_ratio) == ("flux-schnell", "16:9")  # explicit model wins
    assert [(w.line, w.field) for w in job.warnings] == [
        (3, "defaults.quality_mode"),
        (4, "defaults.orientation"),
        (8, "prompts[1].quality_mode"),
        (10, "prompts[1].orientation"),
    ]
    assert "means model: seedream-v4" in job.warnings[0].message
    assert "ignored here because model is set" in job.warnings[2].message


def test_explicit_aspect_ratio_beats_orientation_in_the_same_place(load_text: LoadText) -> None:
    job = load_text(
        'name: o\nprompts:\n  - prompt: a\n    orientation: portrait\n    aspect_ratio: "1:1"\n'
    )
    assert only(job).settings.aspect_ratio == "1:1"
    [warning] = job.warnings
    assert warning.message == "deprecated, and ignored here because aspect_ratio is set"


def test_a_more_specific_quality_mode_beats_a_defaults_model(load_text: LoadText) -> None:
    job = load_text(
        "name: q\ndefaults:\n  model: flux-schnell\nprompts:\n"
        "  - prompt: a\n    quality_mode: standard\n"
    )
    assert only(job).settings.model == "z-image-turbo"


def test_auto_resolution_and_seedream_warn_but_load(load_text: LoadText) -> None:
    job = load_text("name: d\nprompts:\n  - prompt: a\n    model: seedream\n    resolution: auto\n")
    assert only(job).settings == ItemSettings("seedream", "auto", "1:1", "general", 1)
    assert [w.field for w in job.warnings] == ["prompts[0].model", "prompts[0].resolution"]


def test_repeated_warnings_are_folded_into_one(load_text: LoadText) -> None:
    entries = "".join(f"  - prompt: p{n}\n    orientation: landscape\n" for n in range(50))
    job = load_text("name: many\nprompts:\n" + entries)
    [warning] = job.warnings
    assert warning.line == 4
    assert warning.message.endswith("(and 49 more like it in this file)")


def test_warnings_do_not_fail_and_are_problems_with_lines(load_text: LoadText) -> None:
    job = load_text("name: w\nprompts:\n  - file: empty.txt\n  - a\n", {"empty.txt": "# none\n"})
    [warning] = job.warnings
    assert isinstance(warning, Problem)
    assert (warning.line, warning.field) == (3, "prompts[0].file")
    assert warning.message.endswith("empty.txt holds no prompts")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("nightly", "nightly"),
        ("products-{date}", "products-2026-03-14"),
        ("{job}-{date}", "job-2026-03-14"),
        ("{{literal}}-{job}", "{literal}-job"),
    ],
)
def test_name_placeholders(load_text: LoadText, template: str, expected: str) -> None:
    job = load_text(f"name: '{template}'\nprompts:\n  - a\n")
    assert job.name == expected


def test_date_placeholder_defaults_to_today(write_job: WriteJob, catalog: Catalog) -> None:
    job = load_job(write_job("name: 'n-{date}'\nprompts:\n  - a\n"), catalog)
    assert job.name == f"n-{datetime.date.today().isoformat()}"


def test_batch_name_overrides_the_file_and_takes_placeholders(load_text: LoadText) -> None:
    job = load_text("name: original\nprompts:\n  - a\n", batch_name="rerun-{job}-{date}")
    assert job.name == "rerun-job-2026-03-14"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("x-{when}", "unknown placeholder {when} (known: {date}, {job})"),
        ("x-{Date}", "unknown placeholder {Date}; did you mean {date}?"),
        ("x-{date:%Y}", "unknown placeholder {date:%Y} (known: {date}, {job})"),
        ("x-{}", "unknown placeholder {}"),
        ("x-{date", "expected '}' before end of string"),
        ("  ", "must not be empty"),
        ("a/b", "cannot name a batch"),
    ],
)
def test_bad_names(load_text: LoadText, template: str, message: str) -> None:
    [problem] = problems_of(load_text, f"name: '{template}'\nprompts:\n  - a\n")
    assert problem.split(": ", 1)[1].startswith("name: ")
    assert message in problem


def test_bad_batch_name_override_has_no_line(load_text: LoadText) -> None:
    with pytest.raises(JobFileError) as caught:
        load_text("name: n\nprompts:\n  - a\n", batch_name="{nope}")
    [problem] = caught.value.problems
    assert (problem.line, problem.field) == (None, "--batch-name")


def test_spec_fields(write_job: WriteJob, catalog: Catalog, today: datetime.date) -> None:
    path = write_job("name: fields\nbudget: 0\nprompts:\n  - a\n  - b\n")
    job = load_job(str(path), catalog, today=today)
    assert job.path == str(path)
    assert job.budget == 0
    assert job.item_count == 2
    assert job.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert job.warnings == ()


def test_items_is_a_generator_and_can_be_iterated_again(load_text: LoadText) -> None:
    job = load_text(
        "name: again\nprompts:\n  - a\n  - a\n  - file: p.csv\n",
        {"p.csv": "prompt,image_count\nb,2\na,\n"},
    )
    assert inspect.isgenerator(job.items())
    first, second = list(job.items()), list(job.items())
    assert first == second
    assert len(first) == 4


def test_a_prompts_file_changed_after_validation_is_refused(
    write_job: WriteJob, catalog: Catalog
) -> None:
    path = write_job("name: c\nprompts:\n  - file: p.txt\n", {"p.txt": "one\ntwo\n"})
    job = load_job(path, catalog)
    (path.parent / "p.txt").write_text("one\nTWO\n", encoding="utf-8")  # same size
    with pytest.raises(JobFileError, match="changed after it was validated"):
        list(job.items())
    (path.parent / "p.txt").write_text("one\ntwo\nthree\n", encoding="utf-8")
    with pytest.raises(JobFileError, match="different size"):
        list(job.items())


def test_merge_keys_and_aliases(load_text: LoadText) -> None:
    job = load_text(
        """\
        name: anchors
        defaults: &base
          model: flux-schnell
        prompts:
          - prompt: a
            <<: &wide {aspect_ratio: "16:9", image_count: 2}
          - prompt: b
            <<: [*wide, *base]
            image_count: 3
          - &same c
          - *same
        """
    )
    a, b, c1, c2 = job.items()
    assert (a.settings.aspect_ratio, a.settings.image_count) == ("16:9", 2)
    assert (b.settings.aspect_ratio, b.settings.image_count) == ("16:9", 3)
    assert c1.prompt == c2.prompt == "c"
    assert c1.key != c2.key


# -- problems: each names file, line and field; all of them are reported


def test_all_problems_are_reported_in_file_order(load_text: LoadText) -> None:
    problems = problems_of(
        load_text,
        """\
        name: "{nope}"
        budget: -1
        defaults:
          model: flux-schnel
        prompts:
          - ""
          - prompt: x
            image_count: "2"
          - file: missing.txt
        """,
    )
    assert [p.split(": ")[0].rsplit(":", 1)[1] for p in problems] == ["1", "2", "4", "6", "8", "9"]


def test_problem_paths_name_the_prompts_file(load_text: LoadText) -> None:
    problems = problems_of(
        load_text,
        "name: p\nprompts:\n  - file: sub/p.csv\n",
        {"sub/p.csv": "prompt,model\nok,\nbad,flux-schnel\n"},
    )
    [problem] = problems
    assert "sub/p.csv:3: model: unknown model 'flux-schnel'" in problem


def test_cross_field_problem_names_the_entry_and_where_the_rest_came_from(
    load_text: LoadText,
) -> None:
    [problem] = problems_of(
        load_text,
        """\
        name: x
        defaults:
          resolution: 2k
        prompts:
          - prompt: map
            model: krea-2
        """,
    )
    assert ":5: prompts[0].resolution: model 'krea-2' does not allow resolution '2k'" in problem
    assert "(resolution '2k' is set in defaults at " in problem


def test_a_bad_default_combination_is_reported_once_at_defaults(load_text: LoadText) -> None:
    entries = "".join(f"  - p{n}\n" for n in range(20))
    problems = problems_of(
        load_text, "name: x\ndefaults:\n  model: krea-2\n  image_count: 2\nprompts:\n" + entries
    )
    assert len(problems) == 1
    assert ":4: defaults.image_count: model 'krea-2' does not allow image_count 2" in problems[0]


def test_one_wrong_value_gives_one_message(load_text: LoadText) -> None:
    entries = "".join(f"  - p{n}\n" for n in range(20))
    problems = problems_of(load_text, "name: x\ndefaults:\n  tool: nope\nprompts:\n" + entries)
    assert len(problems) == 1


def test_a_cross_field_check_still_runs_beside_an_unrelated_bad_value(
    load_text: LoadText,
) -> None:
    problems = problems_of(
        load_text,
        "name: x\ndefaults:\n  tool: nope\nprompts:\n"
        "  - prompt: a\n    model: krea-2\n    resolution: 4k\n",
    )
    assert len(problems) == 2
    assert "prompts[0].resolution" in problems[1]


def test_job_file_error_carries_structured_problems(load_text: LoadText) -> None:
    with pytest.raises(JobFileError) as caught:
        load_text("name: x\nprompts:\n  - prompt: a\n    modle: z\n")
    [problem] = caught.value.problems
    assert problem.line == 4
    assert problem.field == "prompts[0].modle"
    assert problem.message == "unknown key; did you mean 'model'?"
    assert caught.value.exit_code == 2
