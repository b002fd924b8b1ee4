"""`retailsim generate` / `python -m retailsim.generate`: bad arguments exit 2 with one sentence and leave no
output behind; a good run prints its summary and writes the folder."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from retailsim.cli import main, module_main
from retailsim.data import schema

TINY = ["--customers", "40", "--products", "60", "--stores", "2", "--weeks", "4", "--quiet"]


@pytest.mark.parametrize(
    "arguments, named",
    [
        (["--customers", "-5"], "--customers"),
        (["--weeks", "0"], "--weeks"),
        (["--products", "3"], "--products"),
        (["--stores", "0"], "--stores"),
        (["--seed", "-1"], "--seed"),
    ],
    ids=["negative-customers", "zero-weeks", "too-few-products", "no-stores", "negative-seed"],
)
def test_bad_arguments_exit_2_with_one_sentence_and_no_output(tmp_path, capsys, arguments, named):
    out = tmp_path / "data"
    assert main(["generate", "--out", str(out), *TINY, *arguments]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and named in message and "\n" not in message
    assert "Traceback" not in message
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    existing = tmp_path / "a_file"
    existing.write_text("keep me")
    assert module_main("retailsim.generate", ["--out", str(existing), *TINY]) == 2
    message = capsys.readouterr().err.strip()
    assert "--out" in message and "file" in message and "\n" not in message
    assert existing.read_text() == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file"]


def test_non_empty_folder_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["generate", "--out", str(out), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["generate", "--out", str(out), *TINY, "--overwrite"]) == 0
    assert not (out / "notes.txt").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]  # no staging folder left


def test_good_run_writes_folder_and_prints_summary(tmp_path, capsys):
    out = tmp_path / "nested" / "data"
    assert main(["generate", "--out", str(out), *TINY, "--seed", "7"]) == 0
    printed = capsys.readouterr().out
    assert "rows" in printed and "baskets" in printed and "rows/s" in printed
    assert len(list(out.glob(schema.LGSR_FILE_GLOB))) == 4
    description = json.loads((out / "generator.json").read_text())
    assert description["parameters"] == {"customers": 40, "products": 60, "stores": 2, "weeks": 4, "seed": 7}
    assert (out / "ground_truth.parquet").stat().st_size > 0


def test_module_help_works():
    result = subprocess.run(
        [sys.executable, "-m", "retailsim.generate", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for flag in ("--out", "--customers", "--products", "--stores", "--weeks", "--seed", "--overwrite"):
        assert flag in result.stdout
    assert "default: 2000" in result.stdout
