"""What a folder is poolkit's to write: a run folder, a suite folder and a user's folder are
each written only by the command that made them for that purpose, no command's output lands
on a file a run owns, and a folder cut off while it was being made is resumed."""

import errno
import hashlib
import os
from pathlib import Path

import pytest
from conftest import invoke, one_error_line, run_command, write_rows

from poolkit.files import MARKER
from poolkit.pipeline.runs import RunDirectory


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    """A finished run ``R`` and its data: ``(run folder, data, its files' hashes)``."""
    root = tmp_path_factory.mktemp("owned")
    data = write_rows(root / "d.csv", 90)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POOLKIT_CACHE_DIR", str(root / "cache"))
        result = run_command(data, tiny_model_dir, root / "R")
    assert result.exit_code == 0, result.output
    return root / "R", data


def test_a_suite_refuses_a_run_folder_and_leaves_every_file(finished, tiny_model_dir, tmp_path):
    run, data = finished
    before = snapshot(run)
    suite = tmp_path / "two.toml"
    suite.write_text(f'name = "two"\n[[task]]\nname = "t"\ndata = "{data}"\n')
    result = invoke(["suite", suite, "--out", run, "--model", tiny_model_dir])
    line = one_error_line(result, str(run), "run folder")
    assert "suite folder" in line
    assert snapshot(run) == before
    assert RunDirectory(run).kind() == "run"


def test_a_run_refuses_a_suite_folder(tmp_path, tiny_model_dir):
    folder = RunDirectory(tmp_path / "S")
    folder.claim(("suite.json",), subfolders=(), kind="suite")
    folder.write({"suite.json": "{}\n"}, replace=True)
    before = snapshot(tmp_path / "S")
    result = run_command(write_rows(tmp_path / "d.csv", 60), tiny_model_dir, tmp_path / "S")
    one_error_line(result, "suite folder", "not a run folder")
    assert snapshot(tmp_path / "S") == before


def test_a_folder_older_than_its_kind_is_known_by_its_files(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "summary.csv").write_text("x\n")
    sha = hashlib.sha256(b"x\n").hexdigest()
    (old / MARKER).write_text(f'{{"poolkit": "0.3.0", "files": {{"summary.csv": "{sha}"}}}}\n')
    assert RunDirectory(old).kind() == "run"
    with pytest.raises(Exception, match="poolkit run folder, not a suite folder"):
        RunDirectory(old).claim(kind="suite")


@pytest.mark.parametrize("command", ["predict", "export", "plot", "link"])
def test_no_output_lands_on_a_file_the_run_owns(finished, tmp_path, command):
    run, data = finished
    before = snapshot(run)
    if command == "predict":
        args = ["predict", run, "--data", data, "-o", run / "summary.csv"]
        culprit = "summary.csv"
    elif command == "export":
        args = ["export", run, "--format", "csv", "--table", "results", "-o", run / "results.csv"]
        culprit = "results.csv"
    elif command == "plot":
        args = ["plot", run, "--format", "png", "-o", run / "heads"]
        culprit = "heads"
    else:  # a link elsewhere that points at the run's own file
        os.symlink(run / "pairs.csv", tmp_path / "out.csv")
        args = ["export", run, "--format", "csv", "--table", "pairs", "-o", tmp_path / "out.csv"]
        culprit = "out.csv"
    result = invoke(args)
    one_error_line(result, culprit, str(run))
    assert snapshot(run) == before


def test_a_run_cut_off_while_making_its_folder_resumes(tmp_path, tiny_model_dir, monkeypatch):
    """A full disk while the folder's marker is written, or an earlier release that left only
    an empty heads/ then: the same command, once there is room, runs."""
    import poolkit.pipeline.runs as runs

    data = write_rows(tmp_path / "d.csv", 60)
    original = runs.write_atomic

    def full(path, data):
        if Path(path).name == MARKER:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, data)

    monkeypatch.setattr(runs, "write_atomic", full)
    one_error_line(run_command(data, tiny_model_dir, tmp_path / "R"), "No space left")
    monkeypatch.setattr(runs, "write_atomic", original)
    assert run_command(data, tiny_model_dir, tmp_path / "R").exit_code == 0
    (tmp_path / "R2" / "heads").mkdir(parents=True)  # what the order before this left
    assert run_command(data, tiny_model_dir, tmp_path / "R2").exit_code == 0


def test_a_full_disk_while_saving_heads_leaves_a_run_that_resumes(tmp_path, tiny_model_dir,
                                                                  monkeypatch):
    import poolkit.pipeline.runs as runs

    data = write_rows(tmp_path / "d.csv", 60)
    original, saved = runs.RunStore.save, []

    def fills_up(self, head, fingerprint):
        if len(saved) == 3:
            raise runs.PoolkitError(f"cannot write run directory '{self.out}': No space left")
        saved.append(1)
        return original(self, head, fingerprint)

    monkeypatch.setattr(runs.RunStore, "save", fills_up)
    one_error_line(run_command(data, tiny_model_dir, tmp_path / "R"), "No space left")
    monkeypatch.setattr(runs.RunStore, "save", original)
    again = run_command(data, tiny_model_dir, tmp_path / "R")
    assert again.exit_code == 0, again.output
    assert "reusing 3 finished heads" in again.output
