"""config.json: the one reader of a checkpoint's model config, and the facts a manifest records from it."""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidCheckpoint


def parse_config(raw: bytes, *, checkpoint: str) -> dict[str, Any]:
    """config.json's bytes as a dict. A config that is not a JSON object is an error here, named, rather than a
    puzzle later (no model_type, every key 'removed')."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidCheckpoint(
            f"config.json of {checkpoint!r} is not valid JSON ({exc}).",
            path="config.json",
            hint="Fix the file and save the checkpoint again (ckpt export, edit, ckpt save under a new name).",
        ) from None
    if not isinstance(data, dict):
        raise InvalidCheckpoint(f"config.json of {checkpoint!r} is not a JSON object.", path="config.json",
                                hint="Re-save the config with save_pretrained.")
    return data


def config_facts(raw: bytes | None, *, checkpoint: str) -> dict[str, Any]:
    """What a manifest records about the model from its config: model_type, architectures, the transformers
    version that wrote it and its dtype. A broken config records nothing: saving it is not refused (loading and
    `ckpt validate` name the problem)."""
    if raw is None:
        return {}
    try:
        cfg = parse_config(raw, checkpoint=checkpoint)
    except InvalidCheckpoint:
        return {}
    facts = {key: cfg[key] for key in ("model_type", "architectures", "transformers_version") if key in cfg}
    if "dtype" in cfg or "torch_dtype" in cfg:
        facts["config_dtype"] = cfg.get("dtype", cfg.get("torch_dtype"))
    return facts
