"""What packing and dedup saved: the encoding mix of a checkpoint (`ckpt show`), and per run the logical bytes,
the stored bytes and how much dedup, compression and deltas each saved (`ckpt du`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._repo.repository import Repository


def _forms(repo: "Repository", blobs: dict[str, int], stored: dict[str, int]) -> dict[str, tuple[str, int]]:
    """digest -> (encoding, stored bytes) for each of `blobs` (digest -> raw size); only shorter-than-raw objects
    have their header read."""
    out = {}
    for digest, size in blobs.items():
        now = stored.get(digest)
        if now is None:
            out[digest] = ("missing", 0)
        elif now >= size:
            out[digest] = ("raw", now)
        else:
            head = repo.blobs.header(digest)
            out[digest] = (head.name if head is not None else "damaged", now)
    return out


def encoding_mix(repo: "Repository", cid: str) -> dict[str, dict[str, int]]:
    """encoding -> {"blobs", "raw_bytes", "stored_bytes"} over the checkpoint's distinct blobs."""
    blobs = repo.read_manifest(cid).blob_refs()
    stored = {d: s for d in blobs if (s := repo.blobs.stored_size(d)) is not None}
    mix: dict[str, dict[str, int]] = {}
    for digest, (name, size) in _forms(repo, blobs, stored).items():
        row = mix.setdefault(name, {"blobs": 0, "raw_bytes": 0, "stored_bytes": 0})
        row["blobs"] += 1
        row["raw_bytes"] += blobs[digest]
        row["stored_bytes"] += size
    return mix


def storage_usage(repo: "Repository") -> dict[str, Any]:
    """Per run and in total: logical bytes (as plain folders), unique raw bytes, stored bytes, and what dedup
    (logical - unique), compression (zstd blobs) and deltas (delta blobs) saved. A blob shared by runs counts in
    each run it appears in, once in the total."""
    stored = {d: s for d, s, _ in repo.blobs.iter()}
    runs: dict[str, dict[str, int]] = {}
    everything: dict[str, int] = {}
    logical_total = 0
    per_run_blobs: dict[str, dict[str, int]] = {}
    for info in repo.catalog.infos():
        manifest = repo.read_manifest(info.id)
        blobs = per_run_blobs.setdefault(info.run, {})
        blobs.update(manifest.blob_refs())
        row = runs.setdefault(info.run, {"checkpoints": 0, "logical_bytes": 0})
        row["checkpoints"] += 1
        row["logical_bytes"] += manifest.logical_bytes
        logical_total += manifest.logical_bytes
    forms = _forms(repo, {d: s for b in per_run_blobs.values() for d, s in b.items()}, stored)

    def summarize(blobs: dict[str, int], logical: int) -> dict[str, int]:
        unique = sum(blobs.values())
        out = {"logical_bytes": logical, "unique_bytes": unique, "dedup_saved_bytes": logical - unique,
               "stored_bytes": 0, "zstd_saved_bytes": 0, "delta_saved_bytes": 0}
        for digest, size in blobs.items():
            name, now = forms[digest]
            out["stored_bytes"] += now
            if name in ("zstd", "delta"):
                out[f"{name}_saved_bytes"] += size - now
        return out

    for run, blobs in per_run_blobs.items():
        everything.update(blobs)
        runs[run].update(summarize(blobs, runs[run]["logical_bytes"]))
    total = summarize(everything, logical_total)
    total["store_bytes"] = sum(stored.values())  # also blobs only kept as delta bases
    return {"runs": runs, "total": total}
