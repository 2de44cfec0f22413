"""A grid's output_dir is gendistill's to write only where the project's rule allows: never the working folder, home
or a git repository, and no report file gendistill did not write is overwritten (gendistill.ownership). A folder the
grid marked, or one written before folders were marked (its stage runs carry the run marker), is written again."""

from __future__ import annotations

import pytest

from gendistill.ablate.grid import load_grid
from gendistill.ablate.runner import lock_grid
from gendistill.errors import GendistillError
from gendistill.ownership import marker_kind, write_marker


def _grid(write_grid, tmp_path, out):
    path = write_grid({"masking": ["completion_only", "all_tokens"]})
    text = path.read_text().replace(str(tmp_path / "out"), str(out))
    path.write_text(text)
    return load_grid(path)


def test_a_users_report_file_or_a_git_repository_is_refused_and_left_as_it_was(write_grid, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "report.md").write_text("my notes")
    with pytest.raises(GendistillError, match="refusing to overwrite .*report.md"):
        with lock_grid(_grid(write_grid, tmp_path, user)):
            pass
    assert sorted(p.name for p in user.iterdir()) == ["report.md"] and (user / "report.md").read_text() == "my notes"

    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    with pytest.raises(GendistillError, match="git"):
        with lock_grid(_grid(write_grid, tmp_path, repo)):
            pass
    assert sorted(p.name for p in repo.iterdir()) == [".git"]
    # a git repository that looks like an older grid folder is refused too, and is not marked on the way
    (repo / "stages" / "stage1-abc").mkdir(parents=True)
    write_marker(repo / "stages" / "stage1-abc", "run")
    with pytest.raises(GendistillError, match="git"):
        with lock_grid(_grid(write_grid, tmp_path, repo)):
            pass
    assert marker_kind(repo) is None and sorted(p.name for p in repo.iterdir()) == [".git", "stages"]


def test_a_new_a_marked_and_an_older_grid_folder_are_written(write_grid, tmp_path):
    new = tmp_path / "new"
    with lock_grid(_grid(write_grid, tmp_path, new)):
        pass
    assert marker_kind(new) == "report"
    with lock_grid(_grid(write_grid, tmp_path, new)):  # again: its own folder
        (new / "report.md").write_text("a report")
    with lock_grid(_grid(write_grid, tmp_path, new)):
        pass
    old = tmp_path / "old"  # a grid folder from before the marker: a marked stage run, an unmarked report
    (old / "stages" / "stage1-abc").mkdir(parents=True)
    write_marker(old / "stages" / "stage1-abc", "run")
    (old / "report.json").write_text("{}")
    with lock_grid(_grid(write_grid, tmp_path, old)):
        pass
    assert marker_kind(old) == "report"
