"""Output folders appear whole or not at all, for every stage (generate, prepare-samples, prepare-tensor-cache)."""
import pytest

from retailsim.data.atomic_output import atomic_folder, check_output_folder
from retailsim.errors import RetailSimInputError


def test_success_creates_missing_parents_and_replaces_the_folder(tmp_path):
    out = tmp_path / "runs" / "demo" / "cache"
    check_output_folder(out, overwrite=False)
    with atomic_folder(out) as staging:
        (staging / "a.txt").write_text("new")
        assert not out.exists()  # nothing visible until the block completes
    assert (out / "a.txt").read_text() == "new"
    with atomic_folder(out) as staging:
        (staging / "b.txt").write_text("newer")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["cache"]  # no staging or previous copies left


def test_error_leaves_the_existing_folder_untouched(tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "kept.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(out) as staging:
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
