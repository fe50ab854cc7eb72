"""Dataset specs: how to read one RLDS dataset's image, instruction and action.

RLDS datasets in the wild disagree on where things sit (Bridge's `observation/image_0`
and step-level `language_instruction`; Open-X's `observation/image`, an instruction
inside the observation and a dict action). A spec names those places once; the rest
of the stack reads every dataset through it.

Keys are '/'-separated paths inside one RLDS step, e.g. `observation/image_0` or
`action/world_vector`. A user-defined spec is a JSON file with the fields of
`DatasetSpec`, or a Python file that defines `SPEC = DatasetSpec(...)`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    image_key: str
    # None: the dataset has no instruction (e.g. raw video); `default_instruction` is used.
    instruction_key: str | None = "language_instruction"
    # Keys concatenated, in order, into one flat float32 action vector; a scalar key
    # (e.g. `open_gripper`) contributes one value. None: an action-free dataset.
    action_keys: tuple[str, ...] | None = ("action",)
    state_key: str | None = None
    latent_action_key: str | None = None
    default_instruction: str = ""
    # Skip (and count) episodes that are empty, too short or hold non-finite actions,
    # instead of raising. Off by default: a bad episode is an error.
    skip_bad_episodes: bool = False
    # Index of the gripper in the flat action, and whether a larger value closes it
    # (Meta-World) or opens it (Bridge, Open-X); used by the action head in stage 3.
    gripper_index: int | None = None
    gripper_closes_positive: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("DatasetSpec.name must be a non-empty string")
        if not self.image_key:
            raise ValueError(f"DatasetSpec {self.name!r}: image_key must be non-empty")
        if self.action_keys is not None:
            keys = tuple(self.action_keys)
            if not keys or not all(isinstance(k, str) and k for k in keys):
                raise ValueError(
                    f"DatasetSpec {self.name!r}: action_keys must be None or a non-empty list "
                    f"of key paths, got {self.action_keys!r}"
                )
            object.__setattr__(self, "action_keys", keys)

    @property
    def has_actions(self) -> bool:
        return self.action_keys is not None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["action_keys"] is not None:
            d["action_keys"] = list(d["action_keys"])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], origin: str = "<dict>") -> DatasetSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(
                f"Spec {origin}: unknown fields {unknown}; known fields: {sorted(fields)}"
            )
        missing = [f for f in ("name", "image_key") if f not in d]
        if missing:
            raise ValueError(f"Spec {origin}: missing required fields {missing}")
        d = dict(d)
        if d.get("action_keys") is not None:
            d["action_keys"] = tuple(d["action_keys"])
        return cls(**d)


METAWORLD = DatasetSpec(
    name="metaworld",
    image_key="observation/image",
    instruction_key="language_instruction",
    action_keys=("action",),
    state_key="observation/state",
    gripper_index=3,
    gripper_closes_positive=True,
    description="Meta-World expert episodes from data_pipelines.metaworld_rlds "
    "(action: delta xyz + gripper effort, positive closes).",
)

BRIDGE = DatasetSpec(
    name="bridge",
    image_key="observation/image_0",
    instruction_key="language_instruction",
    action_keys=("action",),
    state_key="observation/state",
    gripper_index=6,
    gripper_closes_positive=False,
    description="RAIL bridge_dataset 1.0.0 (action: 6-d end-effector delta + gripper, 1 = open).",
)

OXE_BRIDGE = DatasetSpec(
    name="oxe_bridge",
    image_key="observation/image",
    instruction_key="observation/natural_language_instruction",
    action_keys=("action/world_vector", "action/rotation_delta", "action/open_gripper"),
    state_key="observation/state",
    gripper_index=6,
    gripper_closes_positive=False,
    description="The Open-X Embodiment copy of Bridge (dict action, instruction in the observation).",
)

VIDEO = DatasetSpec(
    name="video",
    image_key="observation/image",
    instruction_key="language_instruction",
    action_keys=None,
    description="Action-free episodes from data_pipelines.videos_to_rlds (human or robot video).",
)

REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in (METAWORLD, BRIDGE, OXE_BRIDGE, VIDEO)}


def register(spec: DatasetSpec) -> None:
    if spec.name in REGISTRY and REGISTRY[spec.name] != spec:
        raise ValueError(f"A different spec named {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec


def get_spec(name_or_path: str | DatasetSpec) -> DatasetSpec:
    """A registered spec by name, or one loaded from a `.json` or `.py` file."""
    if isinstance(name_or_path, DatasetSpec):
        return name_or_path
    if name_or_path in REGISTRY:
        return REGISTRY[name_or_path]
    if name_or_path.endswith((".json", ".py")):
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"Spec file {name_or_path} does not exist")
        if name_or_path.endswith(".json"):
            with open(name_or_path) as f:
                try:
                    d = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"Spec file {name_or_path} is not valid JSON: {e}") from e
            if not isinstance(d, dict):
                raise ValueError(f"Spec file {name_or_path} must hold a JSON object")
            return DatasetSpec.from_json(d, origin=name_or_path)
        module_name = "lapa_user_spec_" + os.path.basename(name_or_path)[:-3].replace("-", "_")
        loader_spec = importlib.util.spec_from_file_location(module_name, name_or_path)
        assert loader_spec is not None and loader_spec.loader is not None
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
        spec = getattr(module, "SPEC", None)
        if not isinstance(spec, DatasetSpec):
            raise ValueError(f"Spec file {name_or_path} must define SPEC = DatasetSpec(...)")
        return spec
    raise KeyError(
        f"Unknown dataset spec {name_or_path!r}: registered specs are {sorted(REGISTRY)}, "
        "or pass the path of a .json or .py spec file"
    )
