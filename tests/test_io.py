"""Shared file helpers: JSONL errors name file and line; folders and files are published atomically."""

from __future__ import annotations

import gzip
import json

import pytest

from gendistill.errors import DataError
from gendistill.io import atomic_write_json, iter_jsonl, publish_dir


def test_iter_jsonl_reads_gzip_and_names_the_bad_line(tmp_path):
    p = tmp_path / "d.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write('{"a": 1}\n\n{"a": 2}\n{"a": \n')
    with pytest.raises(DataError, match=r"d\.jsonl\.gz:4: malformed JSON line"):
        list(iter_jsonl(p))
    p.write_bytes(gzip.compress(b'{"a": 1}\n[1, 2]\n'))
    with pytest.raises(DataError, match=r":2: expected a JSON object, got list"):
        list(iter_jsonl(p))
    with pytest.raises(DataError, match="file not found"):
        list(iter_jsonl(tmp_path / "missing.jsonl"))


def test_publish_dir_replaces_an_existing_folder_without_leftovers(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp = tmp_path / ".model.tmp"
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    publish_dir(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_write_json_leaves_no_temporary(tmp_path, monkeypatch):
    import os

    import numpy as np

    obj = {"x": 1, "name": "café", "nested": [1.5, None, {"k": True}], "n": np.int64(7)}
    atomic_write_json(tmp_path / "r.json", obj)
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8")) == {**obj, "n": 7}
    atomic_write_json(tmp_path / "r.json", {"x": 2})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]

    # a write that fails before the rename leaves the previous file whole and no temporary behind
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(tmp_path / "r.json", {"x": 3, "big": list(range(1000))})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_exclusive_publish_refuses_a_target_that_appeared_meanwhile(tmp_path):
    final = tmp_path / "model"
    tmp = tmp_path / ".model.tmp"
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    final.mkdir()  # a concurrent run published first (even an empty folder counts)
    with pytest.raises(FileExistsError):
        publish_dir(tmp, final, replace=False)
    assert list(final.iterdir()) == [] and (tmp / "new.txt").exists()
    final.rmdir()
    publish_dir(tmp, final, replace=False)
    assert (final / "new.txt").read_text() == "new"


def test_atomic_writes_honour_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "r.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_published_folders_honour_the_umask(tmp_path, umask, mode):
    """A folder published by :func:`publish_dir` (students, checkpoints) holds files of the umask's mode even when
    their writer made them 0600, as safetensors' ``save_file`` (and so ``save_pretrained``) does."""
    import os

    import torch
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        tmp = tmp_path / ".out.tmp"
        (tmp / "sub").mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
        (tmp / "sub" / "private.json").write_text("{}")
        os.chmod(tmp / "sub" / "private.json", 0o600)
        publish_dir(tmp, tmp_path / "out")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "sub/private.json"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == mode, name


def test_portable_command_drops_machine_paths():
    from gendistill.io import portable_command

    cmd = portable_command(["benchmarks/x.py", "--out", "/tmp/run 7/tt.json", "--profile=/tmp/p", "--seq", "2048",
                            "relative/dir"])
    assert cmd == "benchmarks/x.py --out tt.json --profile=p --seq 2048 relative/dir"
    assert "/tmp" not in cmd


def test_portable_paths_cut_machine_paths_and_leave_other_slashes():
    from gendistill.io import absolute_paths, portable_paths

    value = {"out": "/root/out/bench", "plots": ["/tmp/r/fig2.png", "fig5.png"], "n": 3,
             "command": "e2e.py recipes/a.yaml --out /tmp/e2e/run --set teacher.spec=/tmp/t/S.gguf",
             "text": "149.7K tok/s, 3/4 of https://docs.pytorch.org/docs/main/x.html, ~/.cache/x and ./rel/p"}
    assert portable_paths(value) == {
        "out": "bench", "plots": ["fig2.png", "fig5.png"], "n": 3,
        "command": "e2e.py recipes/a.yaml --out run --set teacher.spec=S.gguf",
        "text": value["text"]}
    assert absolute_paths(value) == {"/root/out/bench", "/tmp/r/fig2.png", "/tmp/e2e/run", "/tmp/t/S.gguf"}
    assert absolute_paths(portable_paths(value)) == set()
