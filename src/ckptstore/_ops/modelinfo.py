"""`ckpt info REF`: what huggingface_hub's ``model_info`` tells of a Hub repository, told of a stored checkpoint.
It reads the manifest and, when the checkpoint has one, its README.md (the model card, parsed by huggingface_hub's
own ModelCard); no weight is read unless SHA-256 digests are asked for."""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from .._core.modelinfo import FileInfo, ModelInfo
from .._core.pipeline import pipeline_for
from .._format.manifest import Manifest
from .._format.modelfacts import count_parameters
from .._repo.objects import read_blob
from . import collections
from .family import base_model

if TYPE_CHECKING:
    from .._repo.repository import Repository

_CARD = "README.md"


def _card(repo: "Repository", manifest: Manifest) -> tuple[dict[str, Any] | None, str | None]:
    """(the card's metadata, the first paragraph of its text) of a stored README.md; (None, None) without one."""
    entry = manifest.file(_CARD)
    if entry is None or entry.size > 1 << 20:
        return None, None
    text = b"".join(read_blob(repo.blobs, b.digest) for b in entry.blobs).decode("utf-8", "replace")
    from huggingface_hub import ModelCard  # imported only when there is a card to read

    try:
        card = ModelCard(text, ignore_metadata_errors=True)
        data, body = card.data.to_dict(), card.text
    except Exception:  # noqa: BLE001 - a README that is not a card still has a summary
        data, body = None, text
    return data or None, _summary(body)


def _summary(body: str) -> str | None:
    """The first paragraph of prose: headings, code, HTML, badges and tables skipped."""
    paragraph: list[str] = []
    fenced = False
    for line in body.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        skip = (not stripped or stripped.startswith(("#", "<", "|", "![", "[![", "---", "<!--")))
        if skip:
            if paragraph:
                break
            continue
        paragraph.append(stripped)
    text = " ".join(paragraph)
    return text[:500] + ("…" if len(text) > 500 else "") if text else None


def _library(manifest: Manifest, card: dict[str, Any] | None) -> str | None:
    if card and isinstance(card.get("library_name"), str):
        return card["library_name"]
    paths = {f.path for f in manifest.files}
    if "modules.json" in paths or "config_sentence_transformers.json" in paths:
        return "sentence-transformers"
    if "adapter_config.json" in paths:
        return "peft"
    return "transformers" if "config.json" in paths else None


def _hub_tags(manifest: Manifest, library: str | None, pipeline: str | None, model_type: str | None,
              card: dict[str, Any] | None) -> tuple[str, ...]:
    """Tags as the Hub derives them: library, weight formats, model type, pipeline, then the card's own."""
    tags: list[str] = [t for t in (library,) if t]
    if any(f.is_safetensors for f in manifest.files):
        tags.append("safetensors")
    if any(re.search(r"pytorch_model.*\.bin$", f.path) or f.converted_from for f in manifest.files):
        tags.append("pytorch")
    tags += [t for t in (model_type, pipeline) if t]
    card = card or {}

    def listed(key: str) -> list[str]:
        value = card.get(key)
        return [str(v) for v in (value if isinstance(value, list) else [value] if value else [])]

    tags += listed("tags") + [f"dataset:{d}" for d in listed("datasets")] + listed("language")
    tags += [f"license:{lic}" for lic in listed("license")] + [f"base_model:{b}" for b in listed("base_model")]
    return tuple(dict.fromkeys(tags))


def _sha256(repo: "Repository", blobs) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(read_blob(repo.blobs, b.digest))
    return h.hexdigest()


def model_info(repo: "Repository", ref: str, *, sha256: bool = False) -> ModelInfo:
    cid = repo.resolve(ref)
    info = repo.info(cid)
    manifest = repo.manifest(cid)
    model = manifest.model
    archs = tuple(a for a in model.get("architectures") or () if isinstance(a, str))
    model_type = model.get("model_type") if isinstance(model.get("model_type"), str) else None
    card, summary = _card(repo, manifest)
    pipeline, auto = pipeline_for(archs[0] if archs else None, model_type)
    if card and isinstance(card.get("pipeline_tag"), str):
        pipeline = card["pipeline_tag"]  # the author's word over a rule on the class name
    library = _library(manifest, card)
    if library == "sentence-transformers" and not (card and card.get("pipeline_tag")):
        pipeline = "sentence-similarity"
    parameters, dtypes = count_parameters(manifest)
    base = card.get("base_model") if card and isinstance(card.get("base_model"), str) else None
    return ModelInfo(
        id=cid, name=info.name, run=info.run, step=info.step, created_at=info.created_at,
        model_type=model_type, architectures=archs, pipeline_tag=pipeline, auto_model=auto, library_name=library,
        parameters=parameters, dtypes=dtypes, size=info.logical_bytes, stored_bytes=sum(manifest.blob_refs().values()),
        tags=_hub_tags(manifest, library, pipeline, model_type, card),
        store_tags=tuple(f"{info.run}:{t}" for t in info.tags),
        base_model=base or base_model(repo, info), metrics=dict(info.metrics),
        card_data=json.loads(json.dumps(card, default=str)) if card else None, card_summary=summary,
        collections=tuple(collections.membership(repo, [cid]).get(cid, ())),
        files=tuple(FileInfo(f.path, f.size, f.digest, f.kind, _sha256(repo, f.blobs) if sha256 else None)
                    for f in manifest.files),
    )
