"""torch.distributed.checkpoint (DCP) into the store: a storage writer and reader for ``dcp.save``, ``dcp.load``
and ``dcp.async_save`` on any number of ranks.

    import torch.distributed.checkpoint as dcp
    from ckptstore.integrations.dcp import StoreReader, StoreWriter

    dcp.save({"model": model, "optim": optimizer}, storage_writer=StoreWriter(store, "run/step-100"))
    dcp.load(state, storage_reader=StoreReader(store, "run:latest"))      # at any world size

Every rank writes the tensors DCP gives it (its shards) as one safetensors file of the checkpoint,
``dcp/rank-NNNNN.safetensors``: hashed, deduplicated (an unchanged shard is not written again) and made durable in
parallel, but not committed. The coordinator (rank 0) holds the store's staging lock from before any rank writes
until, in DCP's finish step, it commits one manifest listing every rank's file plus ``dcp/metadata.json`` (DCP's
metadata as JSON: the store never unpickles what it stores) and the config and tokenizer it was given. So a rank
that fails or is killed leaves nothing visible, and a checkpoint is whole once it is listed.
Loading needs no particular world size: DCP's planner reshards, the reader maps the rank files' tensors and copies
the parts each rank asks for. ``ckpt export REF DEST --hf`` turns a checkpoint of a transformers model into a folder
``from_pretrained`` loads.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import tempfile
import uuid
import weakref
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, SavePlan, SavePlanner
from torch.distributed.checkpoint.planner import WriteItemType
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from .. import Store
from .._core.dcplayout import METADATA_PATH, DcpChunk, DcpItem, DcpLayout, rank_file
from .._core.info import SaveReport
from ..errors import InvalidArgument, NameExists, UnsafePickle

__all__ = ["StoreReader", "StoreWriter"]


@dataclasses.dataclass(frozen=True)
class _Stored:
    """Where one write item went (DCP hands these from every rank to the coordinator, in memory)."""

    file: str
    tensor: str
    entries: tuple[dict[str, Any], ...] = ()  # the rank file's manifest entry, on the rank's first item only
    new_bytes: int = 0


def _tensor_name(fqn: str, offsets: Iterable[int] | None, taken: set[str]) -> str:
    name = fqn if offsets is None else f"{fqn}@{','.join(str(o) for o in offsets)}"
    while name in taken:  # a bytes item whose key looks like a chunk name: never two tensors of one name
        name += "~"
    taken.add(name)
    return name


def _hf_files(model_config: Any, tokenizer: Any, generation_config: Any) -> dict[str, bytes]:
    """The files save_pretrained writes for the config, generation config and tokenizer (or processor)."""
    if hasattr(model_config, "config") and hasattr(model_config, "can_generate"):  # a model: its config, as
        model = model_config                                                     # save_pretrained writes it
        model_config = copy.deepcopy(model.config)
        model_config.architectures = [type(model).__name__.removeprefix("FSDP")]  # fully_shard renames the class
        if generation_config is None and model.can_generate():
            generation_config = model.generation_config
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="ckpt-dcp-") as tmp:
        for obj in (model_config, generation_config, tokenizer):
            if obj is not None:
                obj.save_pretrained(tmp)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                out[path.relative_to(tmp).as_posix()] = path.read_bytes()
    return out


class StoreWriter(StorageWriter):
    """A DCP storage writer that saves one checkpoint `name` into `store` (each rank passes its own Store on the
    same storage, and the same name).

    `model_config` (a transformers config, or the model: then its class is recorded as the architecture and its
    generation config taken), `tokenizer` and `generation_config` (used on the coordinator) are stored beside the
    DCP state as their save_pretrained files, so that ``ckpt export REF DEST --hf`` can write a from_pretrained folder of
    the state dict entry `model_key` (``"model"``: ``{"model": model.state_dict(), "optim": ...}``; ``""`` when the
    whole state dict is the model's). `tags`, `metrics`, `metadata`, `step`, `parent`, `message` are as in
    Store.save. After the save, `report` on the coordinator is the SaveReport (new_bytes counts every rank's).
    """

    def __init__(self, store: Store, name: str, *, model_config: Any = None, tokenizer: Any = None,
                 generation_config: Any = None, model_key: str = "model", tags: Iterable[str] = (),
                 metrics: Mapping[str, float] | None = None, metadata: Mapping[str, Any] | None = None,
                 step: int | None = None, parent: str | None = None, message: str | None = None) -> None:
        super().__init__()
        if not isinstance(store, Store):
            raise InvalidArgument(f"StoreWriter needs a Store, got {type(store).__name__}.",
                                  hint="StoreWriter(Store.open(PATH), 'run/step-100')")
        self.store = store
        self.name = name
        self.model_key = model_key
        self._hf = (model_config, tokenizer, generation_config)
        self._commit = dict(tags=tuple(tags), metrics=metrics, metadata=metadata, step=step, parent=parent,
                            message=message)
        self.is_coordinator = False
        self.rank: int | None = None
        self.save_id = uuid.uuid4().hex
        self.report: SaveReport | None = None
        self._hold: ExitStack | None = None
        self._release = None

    # -- DCP's protocol -------------------------------------------------------------------------------------------
    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        self._release_hold()  # a save that failed on another rank never reached finish()
        if checkpoint_id:
            self.name = os.fspath(checkpoint_id)
        self.save_id = uuid.uuid4().hex
        self.report = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self._release_hold()
        if not kwargs.get("use_collectives", True):
            raise InvalidArgument("StoreWriter needs dcp.save with use_collectives=True: one process commits"
                                  " the checkpoint after every rank has written its part.")
        self.is_coordinator = is_coordinator
        self.rank = kwargs.get("rank")

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        # Runs on the coordinator before any rank writes: refuse a taken name now, and hold the staging lock so
        # that gc cannot remove what the ranks write before finish() commits it.
        self.store.refresh()
        if self.store.has(self.name):
            raise NameExists(self.name)
        hold = ExitStack()
        hold.enter_context(self.store.staging())
        self._hold = hold
        self._release = weakref.finalize(self, hold.close)  # a writer dropped after a failed save lets gc in
        return [dataclasses.replace(plan, storage_data=rank_file(i)) for i, plan in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        path: str = plan.storage_data
        tensors: dict[str, torch.Tensor] = {}
        placed: list[tuple[Any, str, int]] = []
        taken: set[str] = set()
        for item in plan.items:
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                raw = bytes(data.getbuffer())
                tensor = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
                name = _tensor_name(item.index.fqn, None, taken)
            else:
                tensor = data.detach()
                name = _tensor_name(item.index.fqn, item.tensor_data.chunk.offsets, taken)
            tensors[name] = tensor
            placed.append((item.index, name, tensor.numel() * tensor.element_size()))
        results: list[WriteResult] = []
        if tensors:
            entries, written = self.store.stage_files({path: tensors})
            for i, (index, name, nbytes) in enumerate(placed):
                extra = dict(entries=tuple(entries), new_bytes=written) if i == 0 else {}
                results.append(WriteResult(index=index, size_in_bytes=nbytes,
                                           storage_data=_Stored(path, name, **extra)))
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        try:
            stored = {(r.index.fqn, _offsets(r.index.offset)): r.storage_data for rs in results for r in rs}
            layout = _layout(metadata, stored, model_key=self.model_key, storage_meta=self.storage_meta())
            extra = {METADATA_PATH: layout.to_bytes()}
            if any(x is not None for x in self._hf):
                extra.update(_hf_files(*self._hf))
            staged = [e for s in stored.values() for e in s.entries]
            new_bytes = sum(s.new_bytes for s in stored.values())
            self.report = self.store.commit_staged(self.name, staged, extra_files=extra, staged_bytes=new_bytes,
                                                   **self._commit)
            metadata.storage_data = {MetadataIndex(fqn, off): s for (fqn, off), s in stored.items()}
            metadata.storage_meta = self.storage_meta()
        finally:
            self._release_hold()

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.name, save_id=self.save_id)

    @property
    def checkpoint_id(self) -> str:
        return self.name

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return False  # only an explicit StoreWriter saves into a store

    def _release_hold(self) -> None:
        if self._release is not None:
            self._release()  # closes the hold once; later calls do nothing
            self._release = None
        self._hold = None


class StoreReader(StorageReader):
    """A DCP storage reader of the checkpoint `ref` (a name, ``RUN:TAG`` or an id) in `store`, at any world size."""

    def __init__(self, store: Store, ref: str) -> None:
        super().__init__()
        self.store = store
        self.ref = ref
        self.id: str | None = None
        self.storage_data: dict[MetadataIndex, _Stored] = {}
        self.load_id = uuid.uuid4().hex

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        if checkpoint_id:
            self.ref = os.fspath(checkpoint_id)
        self.id = None
        self.storage_data = {}
        self.load_id = uuid.uuid4().hex

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        self.id = self.store.resolve(self.ref)  # every rank reads the same checkpoint, even if a tag moves
        layout = DcpLayout.from_bytes(self.store.read_file(self.id, METADATA_PATH), checkpoint=self.ref)
        return _metadata(layout, self.ref, self.load_id)

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.storage_data = metadata.storage_data
        if self.id is None:  # a metadata object read by another reader
            self.id = self.store.resolve(self.ref)

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        by_file: dict[str, list[Any]] = {}
        for req in plan.items:
            by_file.setdefault(self.storage_data[req.storage_index].file, []).append(req)
        with self.store.hold(self.id):  # not pruned while this rank reads it
            for path, reqs in by_file.items():
                tensors = self.store.load_tensors(self.id, path)  # mapped from the blobs, not copied
                for req in reqs:
                    stored = tensors[self.storage_data[req.storage_index].tensor]
                    if req.type == LoadItemType.BYTE_IO:
                        planner.load_bytes(req, _safe_bytes(stored, req.storage_index.fqn, self.ref))
                        continue
                    for dim, (start, length) in enumerate(zip(req.storage_offsets, req.lengths)):
                        stored = stored.narrow(dim, start, length)
                    target = planner.resolve_tensor(req).detach()
                    if target.size() != stored.size():
                        raise InvalidArgument(f"{req.storage_index.fqn}: the checkpoint's part has shape"
                                              f" {list(stored.size())}, the state dict asks for {list(target.size())}.")
                    target.copy_(stored)
                    planner.commit_tensor(req, target)
                del tensors
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    @property
    def checkpoint_id(self) -> str:
        return self.ref

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return False


# -- Metadata <-> JSON ------------------------------------------------------------------------------------------------
def _offsets(offset: Any) -> tuple[int, ...] | None:
    return None if offset is None else tuple(int(o) for o in offset)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _layout(metadata: Metadata, stored: Mapping[tuple[str, tuple[int, ...] | None], _Stored], *, model_key: str,
            storage_meta: StorageMeta | None) -> DcpLayout:
    items = []
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, BytesStorageMetadata):
            s = stored[(fqn, None)]
            items.append(DcpItem(fqn, "bytes", file=s.file, tensor=s.tensor))
            continue
        chunks = []
        for c in md.chunks:
            s = stored[(fqn, _offsets(c.offsets))]
            chunks.append(DcpChunk(_offsets(c.offsets), tuple(int(x) for x in c.sizes), s.file, s.tensor))
        items.append(DcpItem(fqn, "tensor", dtype=_dtype_name(md.properties.dtype), size=tuple(int(x) for x in md.size),
                             requires_grad=bool(md.properties.requires_grad), chunks=tuple(chunks)))
    planner_data = metadata.planner_data
    if planner_data is not None:
        try:
            planner_data = {str(k): [p if type(p) in (str, int) else _refuse(p) for p in v]
                            for k, v in planner_data.items()}
        except (AttributeError, TypeError):
            raise InvalidArgument(
                f"The save planner's data ({type(metadata.planner_data).__name__}) cannot be stored as JSON.",
                hint="Use DCP's DefaultSavePlanner (or a planner whose planner_data maps keys to key paths).",
            ) from None
    meta = None
    if storage_meta is not None:
        meta = {"checkpoint_id": None if storage_meta.checkpoint_id is None else os.fspath(storage_meta.checkpoint_id),
                "save_id": storage_meta.save_id, "modules": list(storage_meta.modules or [])}
    return DcpLayout(items=tuple(items), dcp_version=metadata.version or "1.0.0", planner_data=planner_data,
                     storage_meta=meta, hf={"model_key": model_key})


def _refuse(part: Any) -> Any:
    raise TypeError(type(part).__name__)


def _metadata(layout: DcpLayout, ref: str, load_id: str) -> Metadata:
    state: dict[str, Any] = {}
    storage: dict[MetadataIndex, _Stored] = {}
    for item in layout.items:
        if item.kind == "bytes":
            state[item.fqn] = BytesStorageMetadata()
            storage[MetadataIndex(item.fqn)] = _Stored(item.file, item.tensor)
            continue
        dtype = getattr(torch, item.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise InvalidArgument(f"{item.fqn}: unknown dtype {item.dtype!r} in {ref!r}.",
                                  hint="Load it with the torch version that saved it.")
        chunks = []
        for i, c in enumerate(item.chunks):
            chunks.append(ChunkStorageMetadata(offsets=torch.Size(c.offsets), sizes=torch.Size(c.sizes)))
            storage[MetadataIndex(item.fqn, c.offsets, i)] = _Stored(c.file, c.tensor)
        state[item.fqn] = TensorStorageMetadata(
            properties=TensorProperties(dtype=dtype, requires_grad=item.requires_grad),
            size=torch.Size(item.size), chunks=chunks)
    planner_data = None
    if layout.planner_data is not None:
        planner_data = {k: tuple(v) for k, v in layout.planner_data.items()}
    sm = layout.storage_meta or {}
    storage_meta = StorageMeta(checkpoint_id=sm.get("checkpoint_id"), save_id=sm.get("save_id"), load_id=load_id,
                               modules=list(sm.get("modules") or []))
    return Metadata(state_dict_metadata=state, planner_data=planner_data, storage_data=storage,
                    storage_meta=storage_meta, version=layout.dcp_version)


def _safe_bytes(stored: torch.Tensor, fqn: str, ref: str) -> io.BytesIO:
    """A non-tensor entry for the planner, which unpickles it with weights_only=False: it is read here with
    weights_only=True (plain Python values and tensors, nothing that runs code) and handed on re-serialized, so the
    planner only ever unpickles what this process wrote."""
    try:
        value = torch.load(io.BytesIO(stored.numpy().tobytes()), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler's refusals come as several error types
        raise UnsafePickle(f"Entry {fqn!r} of {ref!r} is not a plain value: {str(exc).splitlines()[0][:200]}.",
                           hint="Only plain values (numbers, strings, lists, dicts) and tensors are loaded.") from None
    out = io.BytesIO()
    torch.save(value, out)
    out.seek(0)
    return out
