"""ckptstore: Hugging Face model checkpoints stored the way git stores source.

Every checkpoint saved once, deduplicated by content, verifiable, named and tagged, pruned by policy, and exported
back to a plain folder that ``from_pretrained`` loads.
"""

from typing import TYPE_CHECKING, Any

from ._core.info import CheckpointInfo, DiskUsage, RunUsage, SaveReport
from ._ops.diff import DiffReport
from ._ops.gc import GcPlan
from ._ops.validate import ValidationReport
from ._ops.verify import Problem, VerifyReport
from .errors import (
    AmbiguousReference,
    CheckpointNotFound,
    CkptError,
    CompatibilityWarning,
    CorruptObject,
    DestinationNotEmpty,
    IncompatibleFormat,
    IncompleteCheckpoint,
    InvalidArgument,
    InvalidCheckpoint,
    InvalidName,
    InvalidSafetensors,
    NameChanged,
    NameExists,
    OutOfMemory,
    PolicyError,
    RetentionWarning,
    ShapeMismatch,
    SourceNotFound,
    StoreFull,
    StoreLocked,
    StoreNotFound,
    StoreReadOnly,
    UnsafePickle,
    UsageError,
    ValidationFailed,
)
from .policies import RetentionPolicy
from .store import DeletePlan, Store

if TYPE_CHECKING:
    from ._training.manager import CheckpointManager

__version__ = "0.1.0"

__all__ = [
    "AmbiguousReference",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointNotFound",
    "CkptError",
    "CompatibilityWarning",
    "CorruptObject",
    "DeletePlan",
    "DestinationNotEmpty",
    "DiffReport",
    "DiskUsage",
    "GcPlan",
    "IncompatibleFormat",
    "IncompleteCheckpoint",
    "InvalidArgument",
    "InvalidCheckpoint",
    "InvalidName",
    "InvalidSafetensors",
    "NameChanged",
    "NameExists",
    "OutOfMemory",
    "PolicyError",
    "Problem",
    "RetentionPolicy",
    "RetentionWarning",
    "RunUsage",
    "SaveReport",
    "ShapeMismatch",
    "SourceNotFound",
    "Store",
    "StoreFull",
    "StoreLocked",
    "StoreNotFound",
    "StoreReadOnly",
    "UnsafePickle",
    "UsageError",
    "ValidationFailed",
    "ValidationReport",
    "VerifyReport",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # CheckpointManager needs torch (~1 s to import); `import ckptstore` and the CLI's read-only commands do not.
    if name == "CheckpointManager":
        from ._training.manager import CheckpointManager

        globals()[name] = CheckpointManager
        return CheckpointManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
