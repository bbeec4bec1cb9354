"""`Store.model_info` / `ckpt info`: what huggingface_hub's ``model_info`` gives for a Hub repository, for a
stored checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .info import human_bytes


@dataclass(frozen=True)
class FileInfo:
    """A file of the checkpoint (the Hub's ``siblings``): its path, size, the store's BLAKE3 file id (the hash of
    its blob hashes), its kind, and its SHA-256 when asked for (the Hub's LFS ``sha256``; reading every byte)."""

    path: str
    size: int
    digest: str
    kind: str
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "digest": self.digest, "kind": self.kind,
                **({"sha256": self.sha256} if self.sha256 else {})}


@dataclass(frozen=True)
class ModelInfo:
    id: str
    name: str
    run: str
    step: int | None
    created_at: float
    model_type: str | None
    architectures: tuple[str, ...]
    pipeline_tag: str | None
    auto_model: str | None  # the transformers Auto class that loads it for its pipeline
    library_name: str | None
    parameters: int  # buffers left out, as model.parameters() counts
    dtypes: dict[str, int]  # parameters per safetensors dtype (the Hub's safetensors.parameters)
    size: int  # bytes as exported
    stored_bytes: int  # bytes of its distinct blobs (shared with other checkpoints or not)
    tags: tuple[str, ...]  # the Hub's kind of tags: library, formats, model type, pipeline, the card's tags
    store_tags: tuple[str, ...]  # RUN:TAG pointing at it now
    base_model: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    card_data: dict[str, Any] | None = None  # README.md's metadata, when a README.md is stored
    card_summary: str | None = None  # the first paragraph of its text
    collections: tuple[str, ...] = ()
    files: tuple[FileInfo, ...] = ()

    @property
    def size_str(self) -> str:
        return human_bytes(self.size)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "run": self.run, "step": self.step, "created_at": self.created_at,
            "model_type": self.model_type, "architectures": list(self.architectures),
            "pipeline_tag": self.pipeline_tag, "auto_model": self.auto_model, "library_name": self.library_name,
            "parameters": self.parameters, "dtypes": dict(self.dtypes),
            "safetensors": {"parameters": dict(self.dtypes), "total": self.parameters},
            "size": self.size, "stored_bytes": self.stored_bytes, "tags": list(self.tags),
            "store_tags": list(self.store_tags), "base_model": self.base_model, "metrics": dict(self.metrics),
            "card_data": self.card_data, "card_summary": self.card_summary, "collections": list(self.collections),
            "files": [f.to_json() for f in self.files],
        }
