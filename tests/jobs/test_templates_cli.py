"""Templates through the real command line (`plan`, `validate --max-items`), and
files that are not regular files (FIFOs, devices) refused at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from batcher.cli import main

EXAMPLES = Path(__file__).parent.parent.parent / "jobs"
MATRIX_EXAMPLE = EXAMPLES / "matrix-example.yaml"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def problem_lines(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if line and not line.startswith(("error: ", "warning: "))
    ]


# -- plan shows the expansion


def test_plan_json_lists_each_templated_entry() -> None:
    result = run("plan", "--json", str(MATRIX_EXAMPLE))
    assert result.exit_code == 0, result.stderr
    [job] = json.loads(result.stdout)["jobs"]
    assert job["items"] == 38
    assert job["entries"] == [
        {
            "line": 19,
            "template": "A {product} in {colour}, {style}, product photography",
            "combinations": 36,
            "vars": ["product", "colour", "style", "model"],
            "sample": [
                "A ceramic mug in red, studio light on white, product photography",
                "A ceramic mug in red, flat lay on linen, product photography",
                "A ceramic mug in teal, studio light on white, product photography",
            ],
        },
        {
            "line": 23,
            "template": "Retro poster: {hero} meets {rival}",
            "combinations": 2,
            "vars": ["hero", "rival"],
            "sample": [
                "Retro poster: a knight meets a dragon",
                "Retro poster: a robot meets a virus",
            ],
        },
    ]
    models = {row["model"]: row["items"] for row in job["models"]}
    assert models == {"z-image-turbo": 18, "flux-schnell": 18, "qwen-image-2.1": 2}
    assert job["estimate_is_lower_bound"] is False


def test_plan_text_shows_combinations_and_the_first_three_prompts() -> None:
    result = run("plan", str(MATRIX_EXAMPLE))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index(
        "template at line 19: A {product} in {colour}, {style}, product photography"
    )
    assert lines[start + 1 : start + 5] == [
        "  36 combinations (product 3 x colour 3 x style 2 x model 2); first prompts:",
        "    A ceramic mug in red, studio light on white, product photography",
        "    A ceramic mug in red, flat lay on linen, product photography",
        "    A ceramic mug in teal, studio light on white, product photography",
    ]
    assert "  2 combinations (hero + rival 2); first prompts:" in lines


def test_validate_counts_the_combinations() -> None:
    result = run("validate", str(MATRIX_EXAMPLE))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"ok: {MATRIX_EXAMPLE} (38 prompts, batch matrix-example)\n"


# -- max_items


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_max_items_flag_refuses_a_job_naming_each_entry(command: str) -> None:
    result = run(command, "--max-items", "30", str(MATRIX_EXAMPLE))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert problem_lines(result.stderr) == [
        f"{MATRIX_EXAMPLE}:16: prompts: the job makes 38 items, more than --max-items 30; "
        "pass a larger --max-items if that many is meant",
        f"{MATRIX_EXAMPLE}:19: prompts[0]: makes 36 items (product 3 x colour 3 x style 2 x "
        "model 2)",
        f"{MATRIX_EXAMPLE}:23: prompts[1]: makes 2 items (hero + rival 2)",
    ]
    assert "nothing was sent" in result.stderr


def test_max_items_flag_allows_what_the_file_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "job.yaml").write_text(
        "name: j\nmax_items: 2\nvars: {a: [x, y, z]}\nprompts:\n  - template: '{a}'\n"
    )
    monkeypatch.chdir(tmp_path)
    assert run("validate", "job.yaml").exit_code == 2
    result = run("validate", "--max-items", "3", "job.yaml")
    assert result.exit_code == 0, result.stderr
    bad = run("validate", "--max-items", "0", "job.yaml")
    assert bad.exit_code == 2
    assert "--max-items" in bad.stderr


# -- vars files as the prompts files are read: named with the entry that named them


def test_a_vars_file_that_is_not_utf8_names_the_job_file_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "job.yaml").write_text(
        "name: j\nvars:\n  p: {file: products.txt}\nprompts:\n  - template: '{p}'\n"
    )
    (tmp_path / "products.txt").write_bytes("mug\nCafé cup\n".encode("latin-1"))
    monkeypatch.chdir(tmp_path)
    result = run("validate", "job.yaml")
    assert result.exit_code == 2
    assert problem_lines(result.stderr) == [
        "products.txt:2: not UTF-8 text (byte 0xe9) (vars.p.file in job.yaml:3)"
    ]


# -- not regular files: refused from their stat, in a real process with a timeout


def python_m_batcher(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # A regression would block on the FIFO or read /dev/zero forever: the timeout
    # turns that into a failure instead of a hung test run.
    return subprocess.run(
        [sys.executable, "-m", "batcher", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "BATCHER_CATALOG": ""},
    )


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


def test_a_fifo_or_a_device_as_the_job_file(fifo: Path, tmp_path: Path) -> None:
    done = python_m_batcher("validate", fifo.name, "/dev/zero", "plan.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert problem_lines(done.stderr) == [
        "pipe.yaml: is a FIFO (named pipe), not a regular file: a job file must be a regular file",
        "/dev/zero: is a character device, not a regular file: a job file must be a regular file",
        "plan.yaml: no such job file",
    ]
    done = python_m_batcher("plan", "--json", "/dev/zero", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""


def test_a_fifo_or_a_device_as_a_prompts_or_vars_file(fifo: Path, tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(
        "name: j\n"
        "vars:\n"
        "  a: {file: pipe.yaml}\n"
        "  b: {file: /dev/zero}\n"
        "prompts:\n"
        "  - file: pipe.yaml\n"
        "  - file: /dev/zero\n"
        "  - template: '{a} {b}'\n"
    )
    done = python_m_batcher("validate", "job.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert problem_lines(done.stderr) == [
        "job.yaml:3: vars.a.file: pipe.yaml is a FIFO (named pipe), not a regular file: "
        "a vars file must be a regular file",
        "job.yaml:4: vars.b.file: /dev/zero is a character device, not a regular file: "
        "a vars file must be a regular file",
        "job.yaml:6: prompts[0].file: pipe.yaml is a FIFO (named pipe), not a regular file: "
        "a prompts file must be a regular file",
        "job.yaml:7: prompts[1].file: /dev/zero is a character device, not a regular file: "
        "a prompts file must be a regular file",
    ]


def test_a_job_file_over_the_size_cap_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "huge.yaml").open("wb") as sparse:
        sparse.truncate(65_000_000)  # no bytes written: only the size says no
    monkeypatch.chdir(tmp_path)
    result = run("validate", "huge.yaml")
    assert result.exit_code == 2
    assert problem_lines(result.stderr) == [
        "huge.yaml: is 65.0 MB, more than the 64 MB a job file may hold; put long lists of "
        "prompts in a prompts file"
    ]


def test_validate_and_plan_load_neither_sqlalchemy_nor_httpx() -> None:
    # Offline commands stay light: the job-file stage needs no database or HTTP.
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['batcher', sys.argv[1], sys.argv[2]]\n"
        "try:\n"
        "    runpy.run_module('batcher', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'httpx'})\n"
        "print(heavy, file=sys.stderr)\n"
    )
    for command in ("validate", "plan"):
        done = subprocess.run(
            [sys.executable, "-c", probe, command, str(MATRIX_EXAMPLE)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "BATCHER_CATALOG": ""},
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.splitlines()[-1] == "[]"
