"""Output folders appear whole or not at all, for every stage (generate, prepare-samples, prepare-tensor-cache)."""
import pytest

from retailsim.data.atomic_output import atomic_folder, check_output_folder
from retailsim.errors import RetailSimInputError


def test_success_creates_missing_parents_and_replaces_the_folder(tmp_path):
    out = tmp_path / "runs" / "demo" / "cache"
    check_output_folder(out, overwrite=False)
    with atomic_folder(out, overwrite=True) as staging:
        (staging / "a.txt").write_text("new")
        assert not out.exists()  # nothing visible until the block completes
    assert (out / "a.txt").read_text() == "new"
    with atomic_folder(out, overwrite=True) as staging:
        (staging / "b.txt").write_text("newer")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["cache"]  # no staging or previous copies left


def test_error_leaves_the_existing_folder_untouched(tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "kept.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(out, overwrite=True) as staging:
            (staging / "half.txt").write_text("partial")
            raise RuntimeError("stage failed mid-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]


def test_refusals_name_the_argument(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RetailSimInputError, match="--out .* is an existing file"):
        check_output_folder(blocker, overwrite=True)
    with pytest.raises(RetailSimInputError, match="cannot be created because .* is a file"):
        check_output_folder(blocker / "sub" / "out", overwrite=False)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(RetailSimInputError, match="--overwrite"):
        check_output_folder(full, overwrite=False)
    check_output_folder(full, overwrite=True)


# --- inputs, claims, signals -------------------------------------------------------------------------------------
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402

from retailsim.cli import main  # noqa: E402
from retailsim.data.atomic_output import check_not_overlapping, lock_path, output_lock  # noqa: E402

GENERATE = ["--customers", "40", "--products", "60", "--stores", "2", "--weeks", "12", "--quiet"]


@pytest.mark.parametrize("where, relation", [(".", "is"), ("..", "contains"), ("sub", "lies inside")],
                         ids=["same", "parent", "child"])
def test_an_output_overlapping_an_input_is_refused_even_with_overwrite(tmp_path, where, relation):
    source = tmp_path / "raw"
    source.mkdir()
    (source / "kept.csv").write_text("x")
    with pytest.raises(RetailSimInputError, match=f"--out .* {relation} the input --input"):
        check_output_folder((source / where), overwrite=True, inputs=[("--input", source)])
    assert (source / "kept.csv").read_text() == "x"
    check_not_overlapping(tmp_path / "raw2", [("--input", source)])  # a sibling sharing a name prefix is fine


def test_prepare_verbs_refuse_to_overwrite_their_own_input(tmp_path, capsys):
    raw, samples = tmp_path / "raw", tmp_path / "samples"
    assert main(["generate", "--out", str(raw), *GENERATE]) == 0
    before = sorted(p.name for p in raw.iterdir())
    for target in (raw, tmp_path):
        assert main(["prepare-samples", "--input", str(raw), "--out", str(target), "--overwrite", "--quiet"]) == 2
        assert "could destroy the input" in capsys.readouterr().err
    assert sorted(p.name for p in raw.iterdir()) == before
    assert main(["prepare-samples", "--input", str(raw), "--out", str(samples), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["prepare-tensor-cache", "--samples", str(samples), "--out", str(samples), "--overwrite",
                 "--quiet"]) == 2
    assert "could destroy the input" in capsys.readouterr().err
    assert (samples / "train.parquet").is_file()


def test_a_claim_is_exclusive_across_processes_and_released_at_exit(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from retailsim.data.atomic_output import output_lock
        with output_lock({str(out)!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RetailSimInputError, match=f"being written by another RetailSim process .pid {holder.pid}"):
            with output_lock(out):
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel still drops the flock
        holder.wait()
    with output_lock(out):  # a stale lock file does not block the next run
        assert lock_path(out).read_text() == str(os.getpid())
    assert not lock_path(out).exists()


def hold_claim(out):
    """A process holding the claim on ``out`` until killed (the first of two writers, deterministically)."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from retailsim.data.atomic_output import output_lock
        with output_lock({str(out)!r}):
            print("held", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_of_one_out_is_refused_in_every_verb(tmp_path):
    raw = tmp_path / "raw"
    assert main(["generate", "--out", str(raw), *GENERATE]) == 0
    commands = {tmp_path / "g": ["generate", "--out", str(tmp_path / "g"), *GENERATE],
                tmp_path / "s": ["prepare-samples", "--input", str(raw), "--out", str(tmp_path / "s"), "--quiet"]}
    for out, argv in commands.items():
        holder = hold_claim(out)
        try:
            second = subprocess.run([sys.executable, "-m", "retailsim", *argv], stderr=subprocess.PIPE, text=True,
                                    timeout=120)
        finally:
            holder.kill()
            holder.wait()
        assert second.returncode == 2 and "being written by another RetailSim process" in second.stderr, argv
        assert second.stderr.count("\n") == 1 and not out.exists()


def test_a_run_killed_between_its_two_renames_is_put_back(tmp_path):
    """kill -9 after the old output was moved aside and before the new one took its place: the next run on
    that output restores the old one before deciding anything."""
    out = tmp_path / "cache"
    (tmp_path / ".cache.previous-99999").mkdir()
    (tmp_path / ".cache.previous-99999" / "kept.txt").write_text("old")
    (tmp_path / ".cache.partial-99999").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_folder(out, overwrite=True):
            raise RuntimeError("this run fails too")
    assert (out / "kept.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_sigterm_removes_the_staging_folder_and_keeps_the_old_output(tmp_path):
    out = tmp_path / "raw"
    assert main(["generate", "--out", str(out), *GENERATE]) == 0
    before = sorted(p.name for p in out.iterdir())
    process = subprocess.Popen([sys.executable, "-m", "retailsim.generate", "--out", str(out), "--overwrite",
                                *GENERATE[:-1], "--weeks", "200", "--customers", "2000"],
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".raw.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert "terminated" in process.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no .partial, no .lock
    assert sorted(p.name for p in out.iterdir()) == before


def test_an_output_the_system_refuses_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["generate", "--out", str(blocker / "raw"), *GENERATE]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # /proc refuses new folders even to root (past the permission check)
    assert main(["generate", "--out", "/proc/retailsim-test/raw", *GENERATE]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out /proc/retailsim-test/raw cannot be created") and err.count("\n") == 1, err


def test_any_os_error_a_verb_meets_is_one_line_naming_the_file(capsys):
    from retailsim.cli import run_guarded

    assert run_guarded(lambda args: open("/proc/retailsim-test/results.json", "w"), None) == 2
    assert capsys.readouterr().err == "error: /proc/retailsim-test/results.json: No such file or directory\n"
