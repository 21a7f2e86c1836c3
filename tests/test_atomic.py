"""mobiface_tf.atomic, the one writer of every file the project produces: never in place.

Real files in tmp_path, no mocks. Nothing here assumes a folder is unwritable (root writes anywhere): failures are
made by the with-block itself, by a failing check, or by a target that is a folder.
"""
import ast
import json
import os
import stat
from pathlib import Path

import pytest

from mobiface_tf.atomic import (CheckFailed, atomic_path, commit_temp, is_temp_name, leftover_temps, temp_beside,
                                write_bytes_atomic, write_json_atomic, write_text_atomic)

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_block_that_raises_leaves_the_old_file_whole_and_no_temp(tmp_path):
    target = tmp_path / "model.tflite"
    target.write_bytes(b"the working model")
    for error in (RuntimeError("conversion failed"), OSError(28, "No space left on device"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with atomic_path(target) as tmp:
                assert tmp.parent == tmp_path and tmp.exists() and tmp != target
                tmp.write_bytes(b"half a mod")
                raise error
        assert target.read_bytes() == b"the working model"
        assert _names(tmp_path) == ["model.tflite"]  # the temporary file is gone


def test_a_failed_check_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "report.json"
    write_json_atomic(target, {"threshold": 0.3})
    before = target.read_bytes()
    seen = []

    def refuse(tmp: Path) -> bool:  # the check sees the whole new file, flushed, under the temporary name
        seen.append((tmp.name, tmp.read_text()))
        return False

    with pytest.raises(CheckFailed, match="report.json.*failed its check"):
        write_text_atomic(target, "new text", check=refuse)
    assert seen and is_temp_name(seen[0][0]) and seen[0][1] == "new text"

    def broken(tmp: Path) -> None:  # a check that raises: its own error, the same guarantee
        raise ValueError("parity 0.0 < 0.999")

    with pytest.raises(ValueError, match="parity"):
        write_bytes_atomic(target, b"new bytes", check=broken)
    assert target.read_bytes() == before
    assert _names(tmp_path) == ["report.json"]
    # A check that passes (returns None or True) lets the file through.
    write_text_atomic(target, "accepted", check=lambda tmp: tmp.read_text() == "accepted")
    assert target.read_text() == "accepted" and _names(tmp_path) == ["report.json"]


def test_missing_parent_folders_are_created(tmp_path):
    target = tmp_path / "runs" / "deploy" / "v2" / "index.json"
    write_json_atomic(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]} and target.read_text().endswith("\n")
    with atomic_path(tmp_path / "new" / "m.keras", keep_suffix=True) as tmp:
        assert tmp.parent.is_dir()
        tmp.write_bytes(b"x")
    assert (tmp_path / "new" / "m.keras").read_bytes() == b"x"


def test_helpers_write_what_they_are_given(tmp_path):
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\xff")
    write_text_atomic(tmp_path / "t.txt", "Jos\u00e9 \u00c1lvarez\n")
    write_json_atomic(tmp_path / "j.json", {"name": "Jos\u00e9"}, indent=2, ensure_ascii=False)
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert (tmp_path / "t.txt").read_bytes() == "Jos\u00e9 \u00c1lvarez\n".encode("utf-8")
    assert (tmp_path / "j.json").read_text(encoding="utf-8") == '{\n  "name": "Jos\u00e9"\n}\n'
    with pytest.raises(TypeError):  # not JSON: refused before anything is created
        write_json_atomic(tmp_path / "bad.json", {"x": object()})
    assert _names(tmp_path) == ["b.bin", "j.json", "t.txt"]


def test_a_replaced_file_keeps_its_mode(tmp_path):
    target = tmp_path / "m.tflite"
    write_bytes_atomic(target, b"old")
    os.chmod(target, 0o640)
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o640


def test_temporary_names_are_hidden_unique_and_match_no_glob_of_the_target(tmp_path):
    target = tmp_path / "train-00000-of-00004.tfrecord"
    a, b = temp_beside(target), temp_beside(target)
    assert a != b and a.parent == b.parent == tmp_path
    assert a.name.startswith(".") and a.name.endswith(".tmp") and is_temp_name(a.name)
    assert list(tmp_path.glob("*.tfrecord")) == []  # a reader's glob never sees a half shard
    keras_tmp = temp_beside(tmp_path / "embedding.keras", keep_suffix=True)
    assert keras_tmp.suffix == ".keras" and is_temp_name(keras_tmp.name)
    (tmp_path / ".prepare.lock").write_text("{}")
    (tmp_path / "notes.tmp").write_text("a user's file")
    assert leftover_temps(tmp_path) == sorted([a, b, keras_tmp])  # what a killed writer left, nothing else
    a.write_bytes(b"shard")
    commit_temp(a, target)
    assert target.read_bytes() == b"shard" and not a.exists()
    with pytest.raises(CheckFailed):
        commit_temp(b, target, check=lambda tmp: False)
    assert not b.exists() and target.read_bytes() == b"shard"


def test_a_folder_at_the_target_is_left_alone(tmp_path):
    folder = tmp_path / "results"
    (folder / "inside").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        write_text_atomic(folder, "x")
    assert _names(folder) == ["inside"] and _names(tmp_path) == ["results"]


def test_a_symlink_at_the_target_is_replaced_and_the_file_it_points_to_is_not_written(tmp_path):
    shared = tmp_path / "shared_model.tflite"
    shared.write_bytes(b"the shared reference model")
    link = tmp_path / "model.tflite"
    link.symlink_to(shared)
    write_bytes_atomic(link, b"a new export")
    assert shared.read_bytes() == b"the shared reference model"
    assert not link.is_symlink() and link.read_bytes() == b"a new export"


def test_the_writer_imports_nothing_of_ours_and_no_tensorflow():
    tree = ast.parse((REPO / "mobiface_tf" / "atomic.py").read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert modules <= {"__future__", "contextlib", "json", "os", "re", "secrets", "stat", "pathlib", "typing"}, modules


def test_no_module_writes_files_atomically_on_its_own():
    """One helper owns atomic writes: no other module renames temp files into place or makes its own temp files
    (outputs.py's write probe, removed at once, is the one tempfile use), and data.manifest no longer imports
    data.tfrecord for a writer (the import circle this ended)."""
    own = {"mobiface_tf/atomic.py", "mobiface_tf/outputs.py"}
    for path in sorted((REPO / "mobiface_tf").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        text = path.read_text()
        if rel not in own:
            for needle in ("os.replace(", "os.rename(", ".rename(", "tempfile", "mkstemp"):
                assert needle not in text, (rel, needle)
    manifest = (REPO / "mobiface_tf" / "data" / "manifest.py").read_text()
    assert "tfrecord" not in manifest.split('"""', 2)[2]  # below the docstring: no import of data.tfrecord
