"""`Store.diff`: what changed between two checkpoints, config, files and tensors.

Tensors are compared by their blob digests first: equal digests mean equal bytes, so those tensors are reported
unchanged without reading a byte of them. Only tensors whose blobs differ are mapped and compared numerically, which
makes diffing two steps of a fine-tune that froze most layers about as cheap as reading the layers that moved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import load as _load
from .compat import read_config

if TYPE_CHECKING:
    import torch

    from .._format.manifest import FileEntry, Manifest, TensorEntry
    from .._repo.repository import Repository

_CHUNK = 1 << 22  # elements compared at a time, in float64: 32 MiB per operand
_ABSENT = object()


@dataclass(frozen=True)
class ConfigChange:
    key: str  # dotted for nested configs: "text_config.hidden_size"
    old: Any
    new: Any
    change: str  # "added", "removed" or "changed"

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "old": self.old, "new": self.new, "change": self.change}


@dataclass(frozen=True)
class FileChange:
    path: str
    change: str  # "added", "removed" or "changed"
    old_size: int | None
    new_size: int | None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "change": self.change, "old_size": self.old_size, "new_size": self.new_size}


@dataclass(frozen=True)
class TensorChange:
    """One tensor that differs. `rel_l2` is ||new - old|| / ||old|| and `max_abs` the largest |new - old|, both
    set only for "changed" (same shape); inf when the old tensor is all zeros and the new one is not."""

    name: str
    change: str  # "added", "removed", "reshaped" or "changed"
    old_dtype: str | None
    new_dtype: str | None
    old_shape: tuple[int, ...] | None
    new_shape: tuple[int, ...] | None
    rel_l2: float | None = None
    max_abs: float | None = None

    def to_json(self) -> dict[str, Any]:
        def num(x: float | None) -> float | str | None:
            return x if x is None or math.isfinite(x) else str(x)  # JSON has no inf/nan

        return {
            "name": self.name,
            "change": self.change,
            "old_dtype": self.old_dtype,
            "new_dtype": self.new_dtype,
            "old_shape": None if self.old_shape is None else list(self.old_shape),
            "new_shape": None if self.new_shape is None else list(self.new_shape),
            "rel_l2": num(self.rel_l2),
            "max_abs": num(self.max_abs),
        }


@dataclass(frozen=True)
class DiffReport:
    """`Store.diff(a, b)`: how b differs from a. `tensors_changed` is sorted largest relative change first."""

    a: str  # names
    b: str
    a_id: str
    b_id: str
    config: tuple[ConfigChange, ...]
    files: tuple[FileChange, ...]
    files_unchanged: int
    tensors_added: tuple[TensorChange, ...]
    tensors_removed: tuple[TensorChange, ...]
    tensors_reshaped: tuple[TensorChange, ...]
    tensors_changed: tuple[TensorChange, ...]
    tensors_unchanged: int
    tensors_read: int  # tensors whose bytes were compared (the others matched by digest and were not read)

    @property
    def identical(self) -> bool:
        return not (self.config or self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "a": {"name": self.a, "id": self.a_id},
            "b": {"name": self.b, "id": self.b_id},
            "identical": self.identical,
            "config": [c.to_json() for c in self.config],
            "files": [f.to_json() for f in self.files],
            "files_unchanged": self.files_unchanged,
            "tensors": {
                "added": [t.to_json() for t in self.tensors_added],
                "removed": [t.to_json() for t in self.tensors_removed],
                "reshaped": [t.to_json() for t in self.tensors_reshaped],
                "changed": [t.to_json() for t in self.tensors_changed],
                "unchanged": self.tensors_unchanged,
                "read": self.tensors_read,
            },
        }


def _flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


def config_changes(old: dict[str, Any] | None, new: dict[str, Any] | None) -> tuple[ConfigChange, ...]:
    a, b = _flatten(old or {}), _flatten(new or {})
    changes = []
    for key in sorted(a.keys() | b.keys()):
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va is _ABSENT:
            changes.append(ConfigChange(key, None, vb, "added"))
        elif vb is _ABSENT:
            changes.append(ConfigChange(key, va, None, "removed"))
        elif va != vb:
            changes.append(ConfigChange(key, va, vb, "changed"))
    return tuple(changes)


def file_changes(a: "Manifest", b: "Manifest") -> tuple[tuple[FileChange, ...], int]:
    fa, fb = {f.path: f for f in a.files}, {f.path: f for f in b.files}
    changes, same = [], 0
    for path in sorted(fa.keys() | fb.keys()):
        x, y = fa.get(path), fb.get(path)
        if x is None:
            changes.append(FileChange(path, "added", None, y.size))  # type: ignore[union-attr]
        elif y is None:
            changes.append(FileChange(path, "removed", x.size, None))
        elif x.digest != y.digest:
            changes.append(FileChange(path, "changed", x.size, y.size))
        else:
            same += 1
    return tuple(changes), same


_Located = tuple["FileEntry", "TensorEntry", list]


def _tensors(manifest: "Manifest") -> dict[str, _Located]:
    """The model's tensors by name across all weight shards, with their blobs: resharding does not count as change."""
    out: dict[str, _Located] = {}
    for f in _load.weight_files(manifest):
        parts = f.tensor_blobs()
        for t in f.tensors:
            out[t.name] = (f, t, parts[t.name])
    return out


def _same_bytes(x: _Located, y: _Located) -> bool:
    return (
        x[1].dtype == y[1].dtype
        and x[1].shape == y[1].shape
        and [b.digest for b, _ in x[2]] == [b.digest for b, _ in y[2]]
    )


def tensor_delta(old: "torch.Tensor", new: "torch.Tensor") -> tuple[float, float]:
    """(relative L2 change, max absolute difference), in float64 and in slices so big tensors need little memory."""
    import torch

    fa, fb = old.reshape(-1), new.reshape(-1)
    sq_diff = sq_old = 0.0
    max_abs = 0.0
    for start in range(0, fa.numel(), _CHUNK):
        x = fa[start : start + _CHUNK].to(torch.float64)
        d = fb[start : start + _CHUNK].to(torch.float64) - x
        sq_diff += float((d * d).sum())
        sq_old += float((x * x).sum())
        max_abs = max(max_abs, float(d.abs().max())) if d.numel() else max_abs
    if math.isnan(sq_diff):
        return math.nan, math.nan
    if sq_old == 0.0:
        return (0.0 if sq_diff == 0.0 else math.inf), max_abs
    return math.sqrt(sq_diff) / math.sqrt(sq_old), max_abs


def _by_size(t: TensorChange) -> tuple[float, str]:
    # Largest first; NaN (a tensor that became NaN) is the most alarming change, so it sorts before everything.
    v = t.rel_l2 if t.rel_l2 is not None else 0.0
    return (-math.inf if math.isnan(v) else -v, t.name)


def diff(repo: "Repository", a: str, b: str) -> DiffReport:
    ida, idb = repo.resolve(a), repo.resolve(b)
    ma, mb = repo.manifest(ida), repo.manifest(idb)
    files, files_same = file_changes(ma, mb)
    ta, tb = _tensors(ma), _tensors(mb)
    added, removed, reshaped, changed = [], [], [], []
    unchanged = read = 0
    for name in sorted(ta.keys() | tb.keys()):
        x, y = ta.get(name), tb.get(name)
        if x is None:
            t = y[1]  # type: ignore[index]
            added.append(TensorChange(name, "added", None, t.dtype, None, t.shape))
        elif y is None:
            removed.append(TensorChange(name, "removed", x[1].dtype, None, x[1].shape, None))
        elif _same_bytes(x, y):
            unchanged += 1
        elif x[1].shape != y[1].shape:
            reshaped.append(TensorChange(name, "reshaped", x[1].dtype, y[1].dtype, x[1].shape, y[1].shape))
        else:
            old = _load.load_tensor(repo.blobs, x[1], x[2], verify=False, ckpt=ma.name, file=x[0].path)
            new = _load.load_tensor(repo.blobs, y[1], y[2], verify=False, ckpt=mb.name, file=y[0].path)
            rel, max_abs = tensor_delta(old, new)
            read += 1
            changed.append(TensorChange(name, "changed", x[1].dtype, y[1].dtype, x[1].shape, y[1].shape, rel, max_abs))
    changed.sort(key=_by_size)
    return DiffReport(
        a=ma.name, b=mb.name, a_id=ida, b_id=idb,
        config=config_changes(read_config(repo.blobs, ma), read_config(repo.blobs, mb)),
        files=files, files_unchanged=files_same,
        tensors_added=tuple(added), tensors_removed=tuple(removed), tensors_reshaped=tuple(reshaped),
        tensors_changed=tuple(changed), tensors_unchanged=unchanged, tensors_read=read,
    )
