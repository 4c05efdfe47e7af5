"""Job files through the real command line: the bad-file corpus, good files, plan output.

Each file in bad/ ends with `# expect: <problem line>` comments: the exact lines
`batcher validate` must print on stderr for it, no more and no fewer. The paths
in them are relative to bad/, where the tests run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from batcher.cli import main

HERE = Path(__file__).parent
BAD = HERE / "bad"
GOOD = HERE / "good"
EXAMPLES = HERE.parent.parent / "jobs"
EXPECT = "# expect: "

BAD_FILES = sorted(BAD.glob("*.yaml"))


def expected_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line[len(EXPECT) :] for line in lines if line.startswith(EXPECT)]


def problem_lines(stderr: str) -> list[str]:
    """Problem lines: everything on stderr but the closing summary and warnings."""
    return [
        line
        for line in stderr.splitlines()
        if line and not line.startswith(("error: ", "warning: "))
    ]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_the_corpus_is_large_and_each_file_tests_lines_of_its_own() -> None:
    assert len(BAD_FILES) >= 25
    assert len([path for path in BAD_FILES if path.name.startswith("template-")]) >= 15
    seen: dict[tuple[str, ...], str] = {}
    for path in BAD_FILES:
        expected = expected_lines(path)
        assert expected, f"{path.name} has no `# expect:` line"
        text = path.read_text(encoding="utf-8").splitlines()
        body = len(text) - len(expected)
        assert all(line.startswith(EXPECT) for line in text[body:]), "expectations come last"
        for line in expected:
            named, _, rest = line.partition(":")
            number = rest.split(":", 1)[0]
            # Each problem names this file, or a file it names (a prompts or vars
            # file), and a line that holds something: never an expectation.
            assert named == path.name or (BAD / named).is_file(), line
            if number.isdigit():
                lines = body if named == path.name else len((BAD / named).read_bytes().split(b"\n"))
                assert 1 <= int(number) <= lines, line
        messages = tuple(sorted(line.split(":", 1)[1] for line in expected))
        assert messages not in seen, f"{path.name} tests what {seen[messages]} tests"
        seen[messages] = path.name


@pytest.mark.parametrize("path", BAD_FILES, ids=lambda p: p.stem)
def test_bad_file_reports_every_problem_at_its_line(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(BAD)
    result = run("validate", path.name)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert sorted(problem_lines(result.stderr)) == sorted(expected_lines(path))
    assert "Traceback" not in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_plan_refuses_a_bad_file_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BAD)
    result = run("plan", "--json", "several-errors.yaml")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert sorted(problem_lines(result.stderr)) == sorted(
        expected_lines(BAD / "several-errors.yaml")
    )


def test_several_files_report_all_problems_and_the_good_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(BAD)
    files = ["unknown-model.yaml", "several-errors.yaml", str(GOOD / "anchors.yaml")]
    result = run("validate", *files)
    assert result.exit_code == 2
    expected = expected_lines(BAD / "unknown-model.yaml") + expected_lines(
        BAD / "several-errors.yaml"
    )
    assert problem_lines(result.stderr) == expected  # file by file, line by line
    assert result.stdout == f"ok: {GOOD / 'anchors.yaml'} (5 prompts, batch anchors)\n"
    assert "error: 11 problems in 2 of 3 job files; nothing was sent" in result.stderr


# -- files generated here: bytes that do not belong in a repository as fixtures


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


JOB_HEAD = b'name: generated\nprompts:\n  - "A red bicycle"\n'


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"job.yaml": JOB_HEAD + b"  - \x00\x01\x02\xff junk\n"},
            ["job.yaml:4: contains NUL bytes: a binary file, not YAML text"],
            id="binary-junk",
        ),
        pytest.param(
            {"job.yaml": bytes(range(256)) * 4},
            ["job.yaml:1: contains NUL bytes: a binary file, not YAML text"],
            id="random-bytes",
        ),
        pytest.param(
            {"job.yaml": JOB_HEAD + '  - "Café au lait"\n'.encode("latin-1")},
            ["job.yaml:4: is not UTF-8 text (byte 0xe9); save the file as UTF-8"],
            id="latin-1-job",
        ),
        pytest.param(
            {"job.yaml": JOB_HEAD + b'  - "bell \x07 character"\n'},
            [
                "job.yaml:4: character U+0007 is not allowed in YAML "
                "(control characters are not allowed)"
            ],
            id="control-character",
        ),
        pytest.param(
            {
                "job.yaml": JOB_HEAD + b"  - file: prompts/junk.txt\n",
                "prompts/junk.txt": b"A fine prompt\nA broken \x00 one\n",
            },
            [
                "prompts/junk.txt:2: contains NUL bytes: a binary file, not prompts text "
                "(prompts[1].file in job.yaml:4)"
            ],
            id="binary-prompts-file",
        ),
        pytest.param(
            {
                "job.yaml": JOB_HEAD + b"  - file: prompts/latin.txt\n",
                "prompts/latin.txt": "# comment\n\nA fine prompt\nCafé\n".encode("cp1252"),
            },
            ["prompts/latin.txt:4: not UTF-8 text (byte 0xe9) (prompts[1].file in job.yaml:4)"],
            id="latin-1-prompts-file",
        ),
        pytest.param(
            {
                "job.yaml": JOB_HEAD + b"  - file: prompts/latin.csv\n",
                "prompts/latin.csv": "prompt\nA fine prompt\nCafé\n".encode("latin-1"),
            },
            ["prompts/latin.csv:3: not UTF-8 text (byte 0xe9) (prompts[1].file in job.yaml:4)"],
            id="latin-1-csv",
        ),
        pytest.param(
            {
                "job.yaml": b"name: generated\nprompts:\n  - file: prompts/none.txt\n",
                "prompts/none.txt": b"# nothing but comments\n\n   \n",
            },
            ["job.yaml:2: prompts: no prompts at all: the prompts files hold none"],
            id="prompts-file-without-prompts",
        ),
    ],
)
def test_generated_bad_files(
    files: dict[str, bytes],
    expected: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, data in files.items():
        write(tmp_path / name, data)
    monkeypatch.chdir(tmp_path)
    result = run("validate", "job.yaml")
    assert result.exit_code == 2
    assert problem_lines(result.stderr) == expected


def test_a_job_path_that_is_missing_or_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "folder.yaml").mkdir()
    monkeypatch.chdir(tmp_path)
    result = run("validate", "missing.yaml", "folder.yaml")
    assert result.exit_code == 2
    assert problem_lines(result.stderr) == [
        "missing.yaml: no such job file",
        "folder.yaml: is a folder, not a job file",
    ]


def test_a_huge_alias_expansion_is_refused_quickly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 30 levels of 10: an expansion of 10**30 nodes, checked without expanding it.
    levels = ["a0: &a0 [" + ", ".join(['"lol"'] * 10) + "]"]
    for level in range(1, 30):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        levels.append(f"a{level}: &a{level} [{refs}]")
    text = "name: bomb\n" + "\n".join(levels) + "\nprompts: [*a29]\n"
    write(tmp_path / "job.yaml", text.encode())
    monkeypatch.chdir(tmp_path)
    result = run("validate", "job.yaml")
    assert result.exit_code == 2
    [line] = problem_lines(result.stderr)
    # a4 (line 6) is the first level past the floor of 100,000 nodes
    assert line.startswith("job.yaml:6: YAML aliases here expand to 111,111 nodes")
    assert "(an alias bomb?)" in line


# -- good files


def test_good_files_and_the_examples_validate() -> None:
    files = [*sorted(GOOD.glob("*.yaml")), *sorted(EXAMPLES.glob("*.yaml"))]
    result = run("validate", *map(str, files))
    assert result.exit_code == 0, result.stderr
    oks = result.stdout.splitlines()
    assert len(oks) == len(files)
    assert f"ok: {EXAMPLES / 'demo.yaml'} (12 prompts, batch demo)" in oks
    # 1 + 2x3 + 2x2x2 + 3x2x2x2 items
    assert f"ok: {GOOD / 'templates.yaml'} (39 prompts, batch templates-templates)" in oks
    assert all(line.startswith("ok: ") for line in oks)
    # legacy.yaml is valid, with warnings on stderr
    assert "warning: " in result.stderr
    assert f"{GOOD / 'legacy.yaml'}:4: defaults.quality_mode: deprecated" in result.stderr


def test_validate_prints_a_warning_for_each_deprecated_field() -> None:
    result = run("validate", str(GOOD / "legacy.yaml"))
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert [w.split(": ")[2] for w in warnings] == [
        "defaults.quality_mode",
        "defaults.orientation",
        "prompts[1].quality_mode",
        "prompts[1].model",
        "prompts[1].resolution",
    ]


def test_plan_json_shape() -> None:
    files = [str(EXAMPLES / "demo.yaml"), str(EXAMPLES / "nightly-example.yaml")]
    result = run("plan", "--json", *files)
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"jobs", "total_items", "total_images", "total_estimated_credits"}
    demo, nightly = document["jobs"]
    assert set(demo) == {
        "file",
        "batch",
        "items",
        "images",
        "estimated_credits",
        "estimate_is_lower_bound",
        "budget",
        "models",
        "entries",
    }
    assert demo["entries"] == []  # no templated entry
    assert demo["file"] == files[0]
    assert demo["batch"] == "demo"
    assert demo["items"] == 12
    assert demo["estimate_is_lower_bound"] is False  # lowest resolutions only: exact
    assert demo["budget"] is None
    for row in demo["models"]:
        assert set(row) == {
            "model",
            "items",
            "images",
            "estimated_credits",
            "exact",
            "basis",
            "seen_on",
            "kinds",
        }
    assert sum(row["items"] for row in demo["models"]) == demo["items"]
    assert sum(row["estimated_credits"] for row in demo["models"]) == demo["estimated_credits"]
    assert nightly["batch"].startswith("products-")
    assert nightly["budget"] == 2000
    assert nightly["estimate_is_lower_bound"] is True
    assert document["total_items"] == demo["items"] + nightly["items"]
    assert document["total_images"] == demo["images"] + nightly["images"]
    assert (
        document["total_estimated_credits"]
        == demo["estimated_credits"] + nightly["estimated_credits"]
    )


def test_plan_table_shows_rows_totals_and_the_budget() -> None:
    result = run("plan", str(EXAMPLES / "nightly-example.yaml"))
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "batch products-" in text
    for model in ("z-image-turbo", "flux-schnell", "qwen-image-2.1", "seedream-v4"):
        assert model in text
    assert "lower bound" in text
    assert "budget: 2,000 credits" in text
    assert "≥ marks a lower bound" in text


def test_plan_batch_name_help_has_no_stray_colon() -> None:
    help_text = " ".join(run("plan", "--help").stdout.split())
    assert "the job file's name (placeholders {date} and {job} apply)" in help_text


def test_plan_batch_name_override_applies_placeholders() -> None:
    result = run(
        "plan", "--json", "--batch-name", "rerun-{job}", str(EXAMPLES / "nightly-example.yaml")
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["jobs"][0]["batch"] == "rerun-nightly-example"


def test_a_bad_catalog_exits_2_with_a_message(tmp_path: Path) -> None:
    broken = tmp_path / "catalog.yaml"
    broken.write_text("models: [unclosed\n", encoding="utf-8")
    for args in (
        ["validate", "--catalog", str(broken), str(EXAMPLES / "demo.yaml")],
        ["plan", "--catalog", str(tmp_path / "missing.yaml"), str(EXAMPLES / "demo.yaml")],
    ):
        result = run(*args)
        assert result.exit_code == 2
        assert result.stderr.startswith("error: ")
        assert "catalog" in result.stderr or "YAML" in result.stderr
        assert "Traceback" not in result.stderr


def test_catalog_from_the_environment(tmp_path: Path) -> None:
    result = CliRunner(env={"BATCHER_CATALOG": str(tmp_path)}).invoke(
        main, ["validate", str(EXAMPLES / "demo.yaml")]
    )
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path}: is a folder, not a catalog file\n"


# -- a real process: the console script's module, real streams, real exit codes


def python_m_batcher(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BATCHER_CATALOG": ""},
    )


@pytest.mark.parametrize("name", ["several-errors.yaml", "csv-bad-rows.yaml", "alias-bomb.yaml"])
def test_validate_in_a_subprocess(name: str) -> None:
    done = python_m_batcher("validate", name, cwd=BAD)
    assert done.returncode == 2
    assert done.stdout == ""
    assert sorted(problem_lines(done.stderr)) == sorted(expected_lines(BAD / name))


def test_validate_and_plan_good_files_in_a_subprocess() -> None:
    done = python_m_batcher("validate", "demo.yaml", "nightly-example.yaml", cwd=EXAMPLES)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: demo.yaml (12 prompts, batch demo)\n")
    done = python_m_batcher("plan", "--json", "demo.yaml", cwd=EXAMPLES)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total_items"] == 12
