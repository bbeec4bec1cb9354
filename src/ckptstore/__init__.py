"""ckptstore: Hugging Face model checkpoints stored the way git stores source.

Every checkpoint saved once, deduplicated by content, verifiable, named and tagged, pruned by policy, and exported
back to a plain folder that ``from_pretrained`` loads.
"""

from ._info import CheckpointInfo, DiskUsage, RunUsage
from ._verify import Problem, VerifyReport
from ._gc import GcPlan
from .errors import (
    AmbiguousReference,
    CheckpointNotFound,
    CkptError,
    CorruptObject,
    DestinationNotEmpty,
    IncompatibleFormat,
    IncompleteCheckpoint,
    InvalidArgument,
    InvalidCheckpoint,
    InvalidName,
    InvalidSafetensors,
    NameExists,
    PolicyError,
    SourceNotFound,
    StoreLocked,
    StoreNotFound,
    UnsafePickle,
    UsageError,
    ValidationFailed,
)
from .store import DeletePlan, Store
from ._manager import CheckpointManager

__version__ = "0.1.0"

__all__ = [
    "AmbiguousReference",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointNotFound",
    "CkptError",
    "CorruptObject",
    "DeletePlan",
    "DestinationNotEmpty",
    "DiskUsage",
    "GcPlan",
    "IncompatibleFormat",
    "IncompleteCheckpoint",
    "InvalidArgument",
    "InvalidCheckpoint",
    "InvalidName",
    "InvalidSafetensors",
    "NameExists",
    "PolicyError",
    "Problem",
    "RunUsage",
    "SourceNotFound",
    "Store",
    "StoreLocked",
    "StoreNotFound",
    "UnsafePickle",
    "UsageError",
    "ValidationFailed",
    "VerifyReport",
    "__version__",
]
