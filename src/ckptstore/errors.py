"""The ckptstore error tree.

Every error the library raises on purpose derives from :class:`CkptError`. Each carries the fields a caller
needs and a ``hint`` that says what to do next; the CLI prints ``error: <message>`` and ``hint: <hint>`` on one
line each and exits with ``exit_code`` (2 for a command called wrongly, 1 for a failure).

::

    CkptError
    ├── UsageError                      exit 2: the call itself is wrong
    │   ├── InvalidName (ValueError)        a name, tag or run that breaks the naming rules
    │   ├── InvalidArgument (ValueError)    an option value that makes no sense
    │   ├── SourceNotFound (FileNotFoundError)  SRC does not exist
    │   └── DestinationNotEmpty (FileExistsError)  export/checkout into a folder that has files
    ├── StoreNotFound (FileNotFoundError)   no store at the path
    ├── IncompatibleFormat                  store.json or a manifest from another format version
    ├── ReferenceError_ (LookupError)
    │   ├── CheckpointNotFound              unknown name, tag or id prefix (with "did you mean")
    │   ├── AmbiguousReference              an id prefix that matches several checkpoints
    │   └── CollectionNotFound              an unknown collection (with "did you mean")
    ├── NameExists (FileExistsError)        a checkpoint with that name is already stored
    ├── CollectionExists (FileExistsError)  a collection of that name already exists
    ├── InCollection                        a delete of checkpoints collections hold, without force
    ├── InvalidCheckpoint (ValueError)      what was given is not a loadable checkpoint
    │   ├── IncompleteCheckpoint            weights without config.json, shards missing, ...
    │   ├── InvalidSafetensors              a header or layout that breaks the safetensors format
    │   ├── NotACheckpointFolder (also UsageError, exit 2)  SRC is a file or an empty folder
    │   ├── UnsafePickle                    a pickle that asks for more than tensors
    │   └── ShapeMismatch                   weights whose shapes do not match the config
    ├── CorruptObject (OSError)             a blob or manifest whose bytes do not match its hash
    ├── StoreLocked (TimeoutError)          another process holds the lock we need
    ├── StoreFull (OSError, errno ENOSPC)   the store's disk has no room for a save
    ├── StoreReadOnly (OSError)             a write to a store this process can only read
    ├── RemoteStoreError (OSError)          a remote store's server, bucket or credentials failed a request
    ├── OutOfMemory (MemoryError)           not enough memory to load a checkpoint as asked
    ├── PolicyError (ValueError)            a retention policy that would delete everything, ...
    ├── ValidationFailed                    a checkpoint failed `validate`
    └── SyncConflict                        a sync found names or tags the destination holds for other checkpoints

    CompatibilityWarning (UserWarning)      a checkpoint saved by a newer transformers than the one installed
    RetentionWarning (UserWarning)          a save succeeded but housekeeping afterwards (policy, tags, gc) failed
    StepMismatchWarning (UserWarning)       a checkpoint-N folder saved under a name whose step its state denies
    ReplicationWarning (UserWarning)        a background replication after a save failed (retried after the next)
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "AmbiguousReference",
    "CheckpointNotFound",
    "CkptError",
    "CollectionExists",
    "CollectionNotFound",
    "CompatibilityWarning",
    "CorruptObject",
    "DestinationNotEmpty",
    "InCollection",
    "IncompatibleFormat",
    "IncompleteCheckpoint",
    "InvalidArgument",
    "InvalidCheckpoint",
    "InvalidName",
    "InvalidSafetensors",
    "NameExists",
    "NotACheckpointFolder",
    "OutOfMemory",
    "PolicyError",
    "ReferenceError_",
    "RemoteStoreError",
    "ReplicationWarning",
    "RetentionWarning",
    "ShapeMismatch",
    "SourceNotFound",
    "StepMismatchWarning",
    "StoreFull",
    "StoreLocked",
    "StoreNotFound",
    "StoreReadOnly",
    "SyncConflict",
    "TrainingStateDropped",
    "UnsafePickle",
    "UsageError",
    "ValidationFailed",
]


class CkptError(Exception):
    """Root of every error ckptstore raises on purpose."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class UsageError(CkptError):
    """The command or call is wrong as written; nothing was attempted."""

    exit_code = 2


class InvalidName(UsageError, ValueError):
    default_hint = "Names are segments of letters, digits, '.', '_' and '-' joined by '/', e.g. 'bert-sst2/step-500'."

    def __init__(self, name: str, reason: str, *, kind: str = "name") -> None:
        self.name = name
        self.kind = kind
        super().__init__(f"Invalid {kind} {name!r}: {reason}.")


class InvalidArgument(UsageError, ValueError):
    pass


class SourceNotFound(UsageError, FileNotFoundError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"Source {path!r} does not exist.",
            hint="Give a folder written by save_pretrained or Trainer, or a live model in Python.",
        )


class DestinationNotEmpty(UsageError, FileExistsError):
    def __init__(self, path: str, *, is_file: bool = False) -> None:
        self.path = path
        what = "is a file, not a folder" if is_file else "is not empty"
        super().__init__(f"Destination {path!r} {what}.", hint="Choose a new or empty folder; nothing was written.")


class StoreNotFound(CkptError, FileNotFoundError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"No checkpoint store at {path!r}.",
            hint=f"Run 'ckpt init {path}' to create one, or pass --store / set CKPT_STORE.",
        )


class IncompatibleFormat(CkptError):
    default_hint = "Upgrade ckptstore to read this store."


class ReferenceError_(CkptError, LookupError):
    """A reference (name, RUN:TAG or id prefix) that does not resolve to exactly one checkpoint."""

    def __init__(self, message: str, *, ref: str, candidates: tuple[str, ...] = (), hint: str | None = None):
        self.ref = ref
        self.candidates = tuple(candidates)
        super().__init__(message, hint=hint)


def did_you_mean(candidates: tuple[str, ...] | list[str]) -> str:
    """The sentence " Did you mean 'a' or 'b'?" to append to a message; empty without candidates (see _core/suggest.py)."""
    return " Did you mean " + " or ".join(repr(c) for c in candidates[:3]) + "?" if candidates else ""


class CheckpointNotFound(ReferenceError_):
    def __init__(self, ref: str, candidates: tuple[str, ...] = (), *, run: str | None = None,
                 kind: str = "reference") -> None:
        message = f"Unknown {kind} {ref!r}." + did_you_mean(candidates)
        listing = f"ckpt ls {run}" if run else "ckpt ls"
        super().__init__(message, ref=ref, candidates=candidates, hint=f"Run '{listing}' to see what is stored.")


class AmbiguousReference(ReferenceError_):
    def __init__(self, ref: str, candidates: tuple[str, ...]) -> None:
        shown = ", ".join(candidates[:8]) + (", ..." if len(candidates) > 8 else "")
        super().__init__(
            f"Reference {ref!r} is ambiguous: it matches {len(candidates)} checkpoints ({shown}).",
            ref=ref,
            candidates=candidates,
            hint="Give more characters of the id, or the checkpoint's name.",
        )


class NameExists(CkptError, FileExistsError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"A checkpoint named {name!r} is already stored.",
            hint="Choose another name, or remove the old one with 'ckpt rm'.",
        )


class NameChanged(NameExists):
    """An import found the name stored, but the folder no longer holds what was stored under it."""

    def __init__(self, name: str, folder: str, changed: list[str]) -> None:
        super().__init__(name)
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        self.message = (f"{name!r} is already stored, but {folder!r} has changed since it was imported"
                        f" ({shown} differ).")
        self.hint = (f"Import it under another run (--run NEW), or remove the stored one first ('ckpt rm {name}')"
                     " if the old copy may go.")
        self.args = (self.message,)


class InvalidCheckpoint(CkptError, ValueError):
    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        self.path = path
        super().__init__(message, hint=hint)


class IncompleteCheckpoint(InvalidCheckpoint):
    default_hint = "Save the model with save_pretrained (it writes config.json beside the weights) and try again."


class NotACheckpointFolder(UsageError, InvalidCheckpoint):
    """SRC is a file or an empty folder: bad input, as a SRC that does not exist is (exit 2), and still an
    InvalidCheckpoint for import, which reports such a folder and goes on with the others."""


class InvalidSafetensors(InvalidCheckpoint):
    default_hint = "The file is truncated or not a safetensors file; re-save it with save_pretrained."


class UnsafePickle(InvalidCheckpoint):
    default_hint = "Only plain tensor pickles are read; convert the file to safetensors where it was made."


class ShapeMismatch(InvalidCheckpoint):
    """A stored tensor whose shape is not the one the config asks for (weights saved with another config)."""

    def __init__(self, name: str, tensor: str, checkpoint_shape: tuple[int, ...], model_shape: tuple[int, ...],
                 *, others: int = 0) -> None:
        self.tensor = tensor
        self.checkpoint_shape = tuple(checkpoint_shape)
        self.model_shape = tuple(model_shape)
        more = f" (and {others} more)" if others else ""
        super().__init__(
            f"Checkpoint {name!r} does not match its config: tensor {tensor!r} has shape {list(self.checkpoint_shape)},"
            f" the model built from config.json expects {list(self.model_shape)}{more}.",
            hint="The weights were saved with another config; store them with their own config.json, or pass"
            " ignore_mismatched_sizes=True to re-initialize those tensors.",
        )


class CorruptObject(CkptError, OSError):
    def __init__(self, message: str, *, digest: str | None = None, path: str | None = None, hint: str | None = None):
        self.digest = digest
        self.path = path
        super().__init__(message, hint=hint or "Run 'ckpt verify' to list every damaged checkpoint.")


class StoreFull(CkptError, OSError):
    """No room on the store's disk. An OSError with errno ENOSPC, as the failed write was, so code that checks
    the errno of a failed save keeps working."""

    def __init__(self, path: str, detail: str = "", *, run: str | None = None) -> None:
        self.path = path
        prune = f"'ckpt prune {run}'" if run else "'ckpt prune RUN'"
        super().__init__(
            f"No space left on device: the store at {path!r} has no room{' for ' + detail if detail else ''}.",
            hint=f"Free space on that disk, prune old checkpoints ({prune}, then 'ckpt gc'), or cap the run with"
            " max_bytes in its policy ('ckpt policy RUN --max-bytes 10GB'). Nothing was stored.",
        )
        self.errno = errno.ENOSPC
        self.strerror = os.strerror(errno.ENOSPC)
        self.filename = path


class StoreReadOnly(CkptError, OSError):
    """A write to a store this process cannot write (a read-only mount, another user's folder)."""

    def __init__(self, path: str, code: int = 0) -> None:
        self.path = path
        super().__init__(
            f"The store at {path!r} is read-only for this process; saving, tagging, deleting and gc need write"
            " access.",
            hint="Reading (ls, show, export, verify, validate, diff) works as it is; to write, run as a user who"
            " can write the store, or remount it read-write.",
        )
        self.errno = code or errno.EROFS
        self.strerror = os.strerror(self.errno)
        self.filename = path


class StoreLocked(CkptError, TimeoutError):
    default_hint = "Another ckpt process is working on this store; wait for it to finish and try again."


class OutOfMemory(CkptError, MemoryError):
    default_hint = (
        "Load it in a smaller dtype (dtype=torch.bfloat16, or 'ckpt convert --dtype bf16'), or let accelerate place"
        " it with device_map='auto' (plus offload_folder=... to spill to disk)."
    )


class PolicyError(UsageError, ValueError):
    """A retention setting that cannot be applied as given (exit code 2, as any bad argument)."""


class ValidationFailed(CkptError):
    def __init__(self, message: str, *, report: object = None, hint: str | None = None) -> None:
        self.report = report
        super().__init__(message, hint=hint)


class RetentionWarning(UserWarning):
    """A checkpoint was saved, but housekeeping afterwards failed: applying its run's retention policy, moving its
    tags, updating the index, or the gc that frees pruned blobs. The checkpoint is stored; training goes on."""


class CompatibilityWarning(UserWarning):
    """The checkpoint was saved by a newer transformers than the one installed; it may not load or run the same."""


class StepMismatchWarning(UserWarning):
    """A Trainer checkpoint folder was saved under a name whose step differs from its trainer_state.json's
    global_step: one of the two is probably a mistake (a renamed or copied folder, a typo in the name)."""


# -- Hub (ckpt push, ckpt pull) -----------------------------------------------------------------------------------
#   CkptError
#   └── HubError                        the Hub (or HF_ENDPOINT) failed or refused a push or pull
#       ├── HubAuthError (PermissionError)   no token, or a token the Hub refuses
#       ├── HubRepoNotFound (LookupError)    no such repository (or not visible with this token)
#       └── HubRevisionNotFound (LookupError)  the repository has no such branch, tag or commit
class HubError(CkptError):
    """A push to or pull from the Hugging Face Hub failed. Messages never hold the token."""

    default_hint = "Check the network (and HF_ENDPOINT if set), then run the command again: nothing was recorded."


class HubAuthError(HubError, PermissionError):
    default_hint = "Log in with 'hf auth login', or set HF_TOKEN to a token with write access."


class HubRepoNotFound(HubError, LookupError):
    def __init__(self, repo_id: str, *, hint: str | None = None) -> None:
        self.repo_id = repo_id
        super().__init__(
            f"Hub repository {repo_id!r} does not exist (or this token may not see it).",
            hint=hint or "Check the id (ORG/NAME); a private repository needs a token: 'hf auth login' or HF_TOKEN.",
        )


class HubRevisionNotFound(HubError, LookupError):
    def __init__(self, repo_id: str, revision: str, refs: tuple[str, ...] = ()) -> None:
        self.repo_id, self.revision, self.refs = repo_id, revision, tuple(refs)
        shown = f" It has {', '.join(refs[:8])}." if refs else ""
        super().__init__(
            f"Hub repository {repo_id!r} has no revision {revision!r}.{shown}",
            hint=f"Pull a branch, tag or commit it has (ckpt pull {repo_id}@main), or {repo_id} for main.",
        )


__all__ += ["HubAuthError", "HubError", "HubRepoNotFound", "HubRevisionNotFound"]


class RemoteStoreError(CkptError, OSError):
    """A request to a remote store (S3, GCS, Azure) failed: the server cannot be reached, the bucket does not exist,
    the credentials are refused. Carries the store's URL (never a credential) and says what to check."""

    def __init__(self, url: str, problem: str, *, hint: str | None = None) -> None:
        self.url = url
        super().__init__(f"Remote store {url}: {problem}", hint=hint)


class SyncConflict(CkptError):
    """A sync found names (or user tags) the destination holds for other checkpoints; it left them as they are and
    copied everything else."""

    def __init__(self, destination: str, conflicts: list[str]) -> None:
        self.destination = destination
        self.conflicts = list(conflicts)
        shown = "; ".join(conflicts[:3]) + (f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else "")
        super().__init__(
            f"{len(conflicts)} conflict(s) at {destination}, left as they are: {shown}.",
            hint="Rename the checkpoint on one side ('ckpt mv'), or move the tag by hand; 'ckpt sync --move-tags'"
            " moves user tags to follow the source.",
        )


class ReplicationWarning(UserWarning):
    """Replicating a saved checkpoint to another store in the background failed; the checkpoint is saved in the
    training store, and the next save (or the flush at the end of training) tries again."""


class CollectionNotFound(ReferenceError_):
    """A collection name that no collection has (with "did you mean")."""

    def __init__(self, name: str, candidates: tuple[str, ...] = ()) -> None:
        super().__init__(f"Unknown collection {name!r}." + did_you_mean(candidates), ref=name, candidates=candidates,
                         hint="Run 'ckpt collection ls' to see the collections, or create it with"
                         f" 'ckpt collection create {name}'.")


class CollectionExists(CkptError, FileExistsError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"A collection named {name!r} already exists.",
                         hint=f"Add checkpoints to it ('ckpt collection add {name} REF'), or choose another name.")


class InCollection(CkptError):
    """A delete of checkpoints that collections hold: refused unless forced, which also takes them out."""

    def __init__(self, members: dict[str, tuple[str, list[str]]]) -> None:
        # members: id -> (name, collections holding it)
        self.members = members
        shown = "; ".join(f"{name} is in {', '.join(cols)}" for name, cols in list(members.values())[:3])
        more = f" (and {len(members) - 3} more)" if len(members) > 3 else ""
        name, cols = next(iter(members.values()))
        super().__init__(
            f"Not removed: {shown}{more}.",
            hint=f"Take it out first ('ckpt collection rm {cols[0]} {name}'), or pass --force (force=True) to take it"
            " out of its collections and delete it.",
        )


class TrainingStateDropped(IncompleteCheckpoint):
    """A checkout of a checkpoint whose optimizer, scheduler and RNG state a run's storage policy dropped
    (``keep_training_state``): it loads and exports, but a resume from it would restart the optimizer."""

    def __init__(self, name: str, rule: str, newest: str | None) -> None:
        self.name = name
        self.rule = rule
        self.newest = newest
        where = f"the newest resumable checkpoint of the run is {newest!r}" if newest else "the run has none left"
        super().__init__(
            f"Checkpoint {name!r} cannot be resumed: its training state was dropped by the run's policy ({rule});"
            f" {where}.",
            hint=(f"ckpt checkout {newest} DIR" if newest else "Export its weights with 'ckpt export' instead.")
            + " Keep more with 'ckpt storage RUN --keep-training-state N'.",
        )
