"""What `validate` and `verify` found, recorded in the store so others (``ckpt show``, ``ckpt ui``) can see it
without running them again.

A checkpoint's result goes into its annotation (metadata keys ``validation`` and ``verification``, replaced whole
by the next run), through the same merge `annotate` and `push` use: a manifest is immutable, so what is learnt
later lives beside it and travels with it on sync. The last store-wide verify is one small document,
``reports/verify.json``, replaced atomically. Recording is a courtesy, never the point of the command: a store
this process can only read records nothing, and a checkpoint deleted while it was checked is not brought back.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from .._repo.documents import upsert
from ..errors import CkptError
from . import annotate as _annotate
from .save import environment

if TYPE_CHECKING:
    from .._repo.repository import Repository
    from .validate import ValidationReport
    from .verify import VerifyReport

VALIDATION_KEY = "validation"
VERIFICATION_KEY = "verification"
VERIFY_REPORT = "reports/verify.json"
REPORT_FORMAT = 1
_LIMIT = 10  # findings kept in a record: the record says what to look at, `ckpt validate` says everything
_DAMAGED_LIMIT = 100
_TEXT = 300


def _short(text: str) -> str:
    return text if len(text) <= _TEXT else text[: _TEXT - 3] + "..."


def _version() -> str:
    return environment().get("ckptstore", "?")


def validation_record(report: "ValidationReport", at: float | None = None) -> dict[str, Any]:
    checks = []  # the installed transformers' compatibility is always checked; these are what a checkpoint can miss
    if report.model_class:
        checks.append("loads")
    if report.tokenizer_class:
        checks.append("tokenizer")
    checks.append("finite")  # the stored weights are always scanned, loadable or not
    if report.output_shape is not None:
        checks.append("forward")
    return {
        "passed": report.ok,
        "at": time.time() if at is None else at,
        "checks": checks,
        "errors": [_short(f.message) for f in report.errors[:_LIMIT]],
        "warnings": [_short(f.message) for f in report.warnings[:_LIMIT]],
        "model_class": report.model_class,
        "transformers": report.compatibility.installed,
        "ckptstore": _version(),
    }


def verification_record(report: "VerifyReport", at: float | None = None) -> dict[str, Any]:
    return {
        "passed": report.ok,
        "at": time.time() if at is None else at,
        "deep": report.deep,
        "blobs": report.blobs,
        "bytes_checked": report.bytes_checked,
        "problem_count": len(report.problems),
        "problems": [_short(str(p)) for p in report.problems[:_LIMIT]],
        "ckptstore": _version(),
    }


def store_verify_record(report: "VerifyReport", at: float | None = None) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "at": time.time() if at is None else at,
        "passed": report.ok,
        "deep": report.deep,
        "checkpoints": report.checkpoints,
        "blobs": report.blobs,
        "bytes_checked": report.bytes_checked,
        "problem_count": len(report.problems),
        "damaged": list(report.damaged[:_DAMAGED_LIMIT]),
        "damaged_count": len(report.damaged),
        "problems": [_short(str(p)) for p in report.problems[:_LIMIT]],
        "ckptstore": _version(),
    }


def _record_on(repo: "Repository", cid: str, key: str, record: dict[str, Any]) -> bool:
    if repo.read_only:
        return False
    try:
        _annotate.annotate(repo, cid, metrics=None, metadata={key: record}, message=None)
    except CkptError:
        # Read-only after all (a folder we may read but not write), deleted meanwhile, a damaged annotation document
        # (`ckpt annotate` names it), the commit lock held too long: the check's own result stands either way.
        return False
    return True


def record_validation(repo: "Repository", report: "ValidationReport") -> bool:
    """Record `report` on its checkpoint. False when nothing was recorded (read-only store, checkpoint gone)."""
    return _record_on(repo, report.id, VALIDATION_KEY, validation_record(report))


def record_verify(repo: "Repository", report: "VerifyReport", cid: str | None) -> bool:
    """Record a verify: of one checkpoint (`cid`) on that checkpoint, of the whole store in reports/verify.json."""
    if cid is not None:
        return _record_on(repo, cid, VERIFICATION_KEY, verification_record(report))
    if repo.read_only:
        return False
    data = (json.dumps(store_verify_record(report), sort_keys=True, allow_nan=False) + "\n").encode()
    try:
        upsert(repo.docs, VERIFY_REPORT, data)
    except CkptError:
        return False
    return True


def recorded(metadata: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """The validation and verification records among a checkpoint's metadata (None for each that is absent, or is
    a user's own value under that key rather than a record)."""
    def record(value: Any) -> dict[str, Any] | None:
        ours = isinstance(value, dict) and isinstance(value.get("passed"), bool) and isinstance(value.get("at"), (int, float))
        return value if ours else None

    return {k: record(metadata.get(k)) for k in (VALIDATION_KEY, VERIFICATION_KEY)}


def last_verify(repo: "Repository") -> dict[str, Any] | None:
    """The last store-wide verify (reports/verify.json), or None when none was recorded or it does not parse (a
    damaged report is only a lost report: the next verify replaces it)."""
    got = repo.docs.get(VERIFY_REPORT)
    if got is None:
        return None
    try:
        doc = json.loads(got[0])
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == REPORT_FORMAT else None
