"""Will the installed transformers understand this checkpoint? Saved-with version, model_type and architectures.

Shared by `validate` (which reports it) and `load` (which warns, and explains a failure it can attribute).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._format.modelconfig import parse_config
from . import load as _load

if TYPE_CHECKING:
    from .._format.manifest import Manifest
    from .._backend.protocols import Blobs

UPGRADE_HINT = "Upgrade transformers (pip install -U transformers)"


@dataclass(frozen=True)
class Compatibility:
    saved_with: str | None  # transformers version recorded in config.json, else in the manifest's environment
    installed: str
    model_type: str | None
    model_type_known: bool
    architectures: tuple[str, ...]
    unknown_architectures: tuple[str, ...]

    @property
    def newer(self) -> bool:
        """Saved by a newer transformers than the installed one (compared on major.minor: patch releases do not
        change the format)."""
        if not self.saved_with:
            return False
        from packaging.version import InvalidVersion, Version

        try:
            saved, here = Version(self.saved_with), Version(self.installed)
        except InvalidVersion:
            return False
        return (saved.major, saved.minor) > (here.major, here.minor)

    def problem(self) -> tuple[str, str] | None:
        """(message, hint) for the most likely reason a load fails, or None when nothing looks off."""
        if self.model_type is not None and not self.model_type_known:
            return (
                f"model_type {self.model_type!r} is unknown to transformers {self.installed}"
                + (f" (saved with {self.saved_with})" if self.saved_with else ""),
                f"{UPGRADE_HINT}, or load with trust_remote_code=True if the model ships its own code.",
            )
        if self.newer:
            return (
                f"it was saved by transformers {self.saved_with}, newer than the installed {self.installed}",
                f"{UPGRADE_HINT} to at least {self.saved_with}.",
            )
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "saved_with": self.saved_with,
            "installed": self.installed,
            "newer": self.newer,
            "model_type": self.model_type,
            "model_type_known": self.model_type_known,
            "architectures": list(self.architectures),
            "unknown_architectures": list(self.unknown_architectures),
        }


def read_config(blobs: "Blobs", manifest: "Manifest") -> dict[str, Any] | None:
    """The checkpoint's config.json as a dict; None when it has none. A config.json that is not a JSON object is
    an error here, named, rather than a puzzle later (no model_type, every key 'removed')."""
    entry = manifest.file("config.json")
    if entry is None:
        return None
    return parse_config(_load.read_file_bytes(blobs, entry), checkpoint=manifest.name)


def compatibility(config: dict[str, Any] | None, manifest: "Manifest") -> Compatibility:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = config or {}
    saved = config.get("transformers_version") or manifest.environment.get("transformers")
    model_type = config.get("model_type")
    archs = tuple(a for a in config.get("architectures") or () if isinstance(a, str))
    return Compatibility(
        saved_with=str(saved) if saved else None,
        installed=transformers.__version__,
        model_type=model_type,
        model_type_known=model_type is not None and model_type in CONFIG_MAPPING,
        architectures=archs,
        unknown_architectures=tuple(a for a in archs if not hasattr(transformers, a)),
    )
