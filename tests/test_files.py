"""Atomic writes: the target is either the old file or the complete new one."""

import json

import pytest

from tfvae.files import atomic_path, write_json_atomic


def test_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("old model")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        assert temporary.suffix == ".keras" and temporary.parent == tmp_path
        temporary.write_text("half a new mod")
        raise RuntimeError("killed midway")
    assert target.read_text() == "old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_creates_missing_parent_directories(tmp_path):
    write_json_atomic(tmp_path / "checkpoints" / "x.json", [1])
    assert json.loads((tmp_path / "checkpoints" / "x.json").read_text()) == [1]
