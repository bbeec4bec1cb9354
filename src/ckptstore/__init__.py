"""ckptstore: Hugging Face model checkpoints stored the way git stores source.

Every checkpoint saved once, deduplicated by content, verifiable, named and tagged, pruned by policy, and exported
back to a plain folder that ``from_pretrained`` loads.
"""

from ._diff import DiffReport
from ._gc import GcPlan
from ._info import CheckpointInfo, DiskUsage, RunUsage, SaveReport
from ._manager import CheckpointManager
from ._validate import ValidationReport
from ._verify import Problem, VerifyReport
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
