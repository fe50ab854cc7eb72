from __future__ import annotations

import json

import pytest

from lapa_jax.data import specs


def test_registered_specs():
    assert specs.get_spec("bridge").image_key == "observation/image_0"
    oxe = specs.get_spec("oxe_bridge")
    assert oxe.instruction_key == "observation/natural_language_instruction"
    assert oxe.action_keys == (
        "action/world_vector",
        "action/rotation_delta",
        "action/open_gripper",
    )
    assert specs.get_spec("metaworld").gripper_closes_positive


def test_json_spec_round_trip(tmp_path):
    spec = specs.DatasetSpec(
        name="mine", image_key="observation/rgb", action_keys=("action/a", "action/b")
    )
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(spec.to_json()))
    assert specs.get_spec(str(path)) == spec


def test_python_spec_file(tmp_path):
    path = tmp_path / "my_spec.py"
    path.write_text(
        "from lapa_jax.data.specs import DatasetSpec\n"
        "SPEC = DatasetSpec(name='py', image_key='observation/rgb', action_keys=None)\n"
    )
    spec = specs.get_spec(str(path))
    assert spec.name == "py" and not spec.has_actions


def test_bad_specs(tmp_path):
    with pytest.raises(KeyError, match="Unknown dataset spec 'nope'"):
        specs.get_spec("nope")
    with pytest.raises(ValueError, match="unknown fields \\['image'\\]"):
        specs.DatasetSpec.from_json({"name": "x", "image_key": "a", "image": 1})
    with pytest.raises(ValueError, match="missing required fields \\['image_key'\\]"):
        specs.DatasetSpec.from_json({"name": "x"})
    with pytest.raises(ValueError, match="action_keys"):
        specs.DatasetSpec(name="x", image_key="a", action_keys=())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        specs.get_spec(str(bad))
    with pytest.raises(FileNotFoundError):
        specs.get_spec(str(tmp_path / "missing.json"))
    noattr = tmp_path / "nospec.py"
    noattr.write_text("X = 1\n")
    with pytest.raises(ValueError, match="must define SPEC"):
        specs.get_spec(str(noattr))
