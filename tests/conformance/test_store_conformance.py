"""The store's behaviour, the same on every backend of the storage seam: a local folder and the in-memory backend
(dicts, no rename, no flock, only create-if-absent and compare-and-swap).

The memory store runs under a guard that records every path this process opens, stats, lists, creates, renames or
removes while the test runs: each must lie in the backend's scratch folder (the index, temporary folders), the
test's own tmp_path (its sources and destinations), a folder the tempfile module made during the test (where the
store has transformers write a config or tokenizer to read it back), the Python installation and the code itself. So nothing above the
seam reaches a store folder: the memory store has none, and what it holds must all be in its documents and blobs.
"""

from __future__ import annotations

import builtins
import dataclasses
import io
import os
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_tiny_bert
from safetensors.torch import load_file
from storefiles import blob_path

import ckptstore
from ckptstore import CheckpointManager, CheckpointNotFound, CorruptObject, Store
from ckptstore._backend.local import LocalBackend
from ckptstore._format.manifest import manifest_id
from ckptstore.errors import IncompleteCheckpoint
from ckptstore.policies import RetentionPolicy

from .memory_backend import MemoryBackend

# -- the guard: every path the memory store's tests touch -----------------------------------------------------------

_PATH_FUNCS = ("open", "stat", "lstat", "listdir", "scandir", "mkdir", "makedirs", "rename", "replace", "unlink",
               "remove", "rmdir", "link", "symlink", "truncate", "utime", "chmod", "access", "readlink")


def _python_roots() -> list[str]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.update(p for p in sysconfig.get_paths().values() if p)
    roots.update(p for p in sys.path if p and ("site-packages" in p or "dist-packages" in p))
    return sorted({os.path.realpath(r) for r in roots})


class PathGuard:
    """Records every file-system call by path that lands outside the allowed folders. Calls on an open file
    (an fd, or a name relative to an open folder's `dir_fd`) were checked when that file or folder was opened."""

    # The system's own files: what torch, transformers and Python read about the machine, never a store.
    SYSTEM = ("/proc", "/sys", "/dev", "/etc", "/usr/share", "/usr/lib")
    # The code under test and the tests themselves: read by imports, tracebacks and inspect.
    CODE = (str(Path(__file__).resolve().parents[1]), str(Path(ckptstore.__file__).resolve().parent))

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = sorted({os.path.realpath(a) for a in allowed} | set(allowed))
        self.system = _python_roots() + list(self.SYSTEM) + list(self.CODE)
        self.temp_dirs: list[str] = []
        self.outside: list[tuple[str, str]] = []
        self._inside = threading.local()

    @staticmethod
    def _under(path: str, roots: list[str]) -> bool:
        return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)

    def check(self, what: str, path: Any) -> None:
        if isinstance(path, int) or path is None or getattr(self._inside, "depth", 0):
            return
        try:
            full = os.path.abspath(os.fsdecode(path))  # not realpath: it calls the guarded os.lstat
        except TypeError:
            return
        roots = self.allowed + self.temp_dirs
        if self._under(full, roots + self.system):
            return
        # Looking at a parent of an allowed folder (realpath walks them) reads no store.
        if what in ("os.stat", "os.lstat") and any(self._under(r, [full]) for r in roots):
            return
        self.outside.append((what, full))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def wrap(name: str, fn: Any, n_paths: int = 1) -> Any:
            def guarded(*args: Any, **kwargs: Any) -> Any:
                if kwargs.get("dir_fd") is None and kwargs.get("src_dir_fd") is None:
                    for p in args[:n_paths]:
                        self.check(name, p)
                    for key in ("file", "path", "src", "dst"):
                        if key in kwargs:
                            self.check(name, kwargs[key])
                return fn(*args, **kwargs)

            return guarded

        guarded_open = wrap("open", builtins.open)
        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(io, "open", guarded_open)  # pathlib opens through io.open
        for name in _PATH_FUNCS:
            n = 2 if name in ("rename", "replace", "link", "symlink") else 1
            monkeypatch.setattr(os, name, wrap(f"os.{name}", getattr(os, name), n))
        real_mkdtemp = tempfile.mkdtemp

        def mkdtemp(*args: Any, **kwargs: Any) -> str:
            # A folder of its own made by the tempfile module (transformers saves a config or tokenizer there for
            # the store to read back) is the caller's, not a store's: allowed, as where it is made from.
            self._inside.depth = getattr(self._inside, "depth", 0) + 1
            try:
                made = real_mkdtemp(*args, **kwargs)
            finally:
                self._inside.depth -= 1
            self.temp_dirs.append(os.path.abspath(made))
            return made

        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


# -- the two stores ----------------------------------------------------------------------------------------------


@dataclass
class Subject:
    """A store on one backend, and what a test needs to look under the seam (the backend's blobs and documents) and
    to damage a blob the way that backend can be damaged."""

    kind: str
    store: Store
    backend: Any

    def blob_digests(self) -> set[str]:
        return {d for d, _, _ in self.backend.blobs.iter()}

    def document_keys(self, prefix: str = "") -> set[str]:
        return set(self.backend.documents.list(prefix))

    def flip_byte(self, digest: str, offset: int) -> None:
        """Damage a stored blob in place (and again to repair it)."""
        if self.kind == "memory":
            data, mtime = self.backend.blobs.data[digest]
            damaged = bytearray(data)
            damaged[offset] ^= 0x01
            self.backend.blobs.data[digest] = (bytes(damaged), mtime)
        elif self.kind == "s3":  # overwritten on the server, as another client could
            import obstore

            key = f"objects/{digest[:2]}/{digest[2:]}"
            damaged = bytearray(obstore.get(self.backend.remote.client, key).bytes())
            damaged[offset] ^= 0x01
            obstore.put(self.backend.remote.client, key, bytes(damaged))
        else:
            with open(blob_path(self.store, digest), "r+b") as f:
                f.seek(offset)
                byte = f.read(1)
                f.seek(offset)
                f.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture(params=["local", "memory", "s3"])
def subject(request, tmp_path, monkeypatch):
    if request.param == "local":
        store = Store.init(tmp_path / "store")
        yield Subject("local", store, LocalBackend(tmp_path / "store"))
        store.close()
        return
    if request.param == "s3":  # a real S3 API server (moto_server, tests/s3server.py)
        url = request.getfixturevalue("s3_url")
        monkeypatch.setenv("CKPT_REMOTE_GC_GRACE_SECONDS", "0")  # gc at once, as on the other backends
        store = Store.init(url)
        yield Subject("s3", store, store._repo.backend)
        store.close()
        return
    backend = MemoryBackend()
    guard = PathGuard([backend.scratch, str(tmp_path), os.environ["HF_HOME"]])
    try:
        with pytest.MonkeyPatch.context() as mp:
            guard.install(mp)
            store = Store.on(backend, create=True)
            yield Subject("memory", store, backend)
            store.close()
        assert guard.outside == [], f"the memory store's test touched paths outside its scratch: {guard.outside}"
        # The store kept nothing of its own on local disk: its scratch holds the index and temporary folders.
        left = sorted(os.listdir(backend.scratch))
        assert all(n.startswith("index.sqlite") or n == "tmp" for n in left), left
        tmp = Path(backend.scratch, "tmp")
        assert not tmp.exists() or list(tmp.iterdir()) == []
    finally:
        backend.close()


def _assert_committed_under_the_seam(subject: Subject, infos) -> None:
    """What a save committed is in the backend's documents and blobs: its manifest, its name claim and every blob
    it lists (on the memory backend, the only place it can be)."""
    docs, blobs = subject.document_keys(), subject.blob_digests()
    for info in infos:
        assert f"checkpoints/{info.id}.json" in docs
        assert f"names/{info.run}/{info.name.replace('/', '~')}" in docs
        assert set(subject.store.manifest(info.id).blob_refs()) <= blobs


# -- sources -------------------------------------------------------------------------------------------------------


@pytest.fixture
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


def _bump(model: torch.nn.Module, param: str) -> torch.Tensor:
    """Change one tensor to values no other tensor holds (a constant could equal a LayerNorm's ones)."""
    tensor = dict(model.named_parameters())[param]
    with torch.no_grad():
        tensor.add_(torch.randn_like(tensor))
    return tensor


def _inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([[2, 15, 7, 33, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}


# -- save, load, export --------------------------------------------------------------------------------------------


def test_save_of_a_folder_exports_byte_exact_and_lives_under_the_seam(subject, tmp_path, tokenizer, tree_sha256):
    src = tmp_path / "src"
    make_tiny_bert().save_pretrained(src)
    tokenizer.save_pretrained(src)
    info = subject.store.save(src, "bert/step-1", metrics={"eval_loss": 0.5}, tags=["v1"])
    assert info.new_bytes > 0 and info.name == "bert/step-1" and info.step == 1
    assert [c.name for c in subject.store.list()] == ["bert/step-1"]
    subject.store.export("bert:v1", tmp_path / "out")
    assert tree_sha256(tmp_path / "out") == tree_sha256(src)
    assert subject.store.read_file("bert/step-1", "config.json") == (src / "config.json").read_bytes()
    _assert_committed_under_the_seam(subject, [info])
    assert "refs/tags/bert/v1" in subject.document_keys("refs/tags/")


def test_save_of_a_live_model_is_what_save_pretrained_writes_and_loads_back(subject, tmp_path, tree_sha256):
    model = make_tiny_bert(cls_name="BertForMaskedLM")
    info = subject.store.save(model, "mlm/step-1")
    model.save_pretrained(tmp_path / "reference")
    subject.store.export("mlm/step-1", tmp_path / "out")
    assert tree_sha256(tmp_path / "out") == tree_sha256(tmp_path / "reference")
    _assert_committed_under_the_seam(subject, [info])

    expected = model.state_dict()
    with torch.no_grad():
        want = model(**_inputs()).logits
    for materialize in (False, True):  # mapped from the blobs, and through a folder in the scratch area
        loaded = subject.store.load("mlm/step-1", materialize=materialize)
        assert type(loaded).__name__ == "BertForMaskedLM"
        got = loaded.state_dict()
        assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(**_inputs()).logits, want)
    state = subject.store.load_state_dict("mlm/step-1")
    saved = load_file(tmp_path / "reference" / "model.safetensors")  # tied weights: stored once, as here
    assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)


def test_dedup_a_second_save_writes_nothing_and_a_changed_tensor_only_its_blobs(subject):
    store = subject.store
    model = make_tiny_bert()
    first = store.save(model, "bert/step-1")
    blobs_after_first = subject.blob_digests()
    again = store.save(model, "bert/step-2")
    assert again.new_bytes == 0 and again.id != first.id
    assert subject.blob_digests() == blobs_after_first

    changed = _bump(model, "encoder.layer.1.output.dense.weight")
    third = store.save(model, "bert/step-3")
    assert third.new_bytes == changed.numel() * changed.element_size()
    old, new = store.manifest("bert/step-2"), store.manifest("bert/step-3")
    added = set(new.blob_refs()) - set(old.blob_refs())
    weights = new.file("model.safetensors")
    assert added == {b.digest for b, _ in weights.tensor_blobs()["encoder.layer.1.output.dense.weight"]}
    assert subject.blob_digests() == blobs_after_first | added


# -- names, tags, annotations ----------------------------------------------------------------------------------------


def test_tags_rename_and_annotate(subject):
    store = subject.store
    model = make_tiny_bert()
    for step, loss in ((1, 0.9), (2, 0.4), (3, 0.6)):
        _bump(model, "pooler.dense.bias")
        store.save(model, f"bert/step-{step}", metrics={"eval_loss": loss})
    assert store.info("bert:latest").name == "bert/step-3"
    assert store.info("bert:best").name == "bert/step-2"

    store.tag("bert/step-1", "prod")
    assert store.info("bert:prod").name == "bert/step-1"
    store.tag("bert/step-3", "prod")  # moves
    assert store.info("bert:prod").name == "bert/step-3"
    assert subject.backend.documents.get("refs/tags/bert/prod")[0].decode().strip() == store.resolve("bert/step-3")
    assert store.untag("bert:prod") == store.resolve("bert/step-3")
    with pytest.raises(CheckpointNotFound):
        store.resolve("bert:prod")
    assert "refs/tags/bert/prod" not in subject.document_keys()

    cid = store.resolve("bert/step-1")
    renamed = store.rename("bert/step-1", "bert/first")
    assert renamed.id == cid and renamed.name == "bert/first"
    assert "names/bert/bert~first" in subject.document_keys("names/")
    assert "names/bert/bert~step-1" not in subject.document_keys("names/")
    with pytest.raises(CheckpointNotFound):
        store.resolve("bert/step-1")

    # An annotation that makes another checkpoint the best moves RUN:best.
    info = store.annotate("bert/first", metrics={"eval_loss": 0.1}, message="best after all")
    assert info.metrics["eval_loss"] == 0.1 and info.message == "best after all"
    assert store.info("bert:best").name == "bert/first"
    assert f"annotations/{cid}.json" in subject.document_keys("annotations/")


def test_delete_plans_then_removes_and_moves_latest_and_best(subject, tmp_path):
    store = subject.store
    model = make_tiny_bert()
    for step, loss in ((1, 0.5), (2, 0.3)):
        _bump(model, "pooler.dense.bias")
        store.save(model, f"bert/step-{step}", metrics={"eval_loss": loss})
    store.tag("bert/step-2", "keep")
    gone = store.resolve("bert/step-2")

    plan = store.delete("bert/step-2", dry_run=True)
    assert not plan.executed and [c.name for c in plan.checkpoints] == ["bert/step-2"]
    assert plan.tags == ("bert:keep",) and plan.reclaimable_bytes > 0
    assert store.resolve("bert/step-2") == gone

    done = store.delete("bert/step-2")
    assert done.executed and done.tags == plan.tags
    assert [c.name for c in store.list()] == ["bert/step-1"]
    assert store.info("bert:latest").name == "bert/step-1" and store.info("bert:best").name == "bert/step-1"
    with pytest.raises(CheckpointNotFound):
        store.load_state_dict("bert/step-2")
    docs = subject.document_keys()
    assert f"checkpoints/{gone}.json" not in docs and "names/bert/bert~step-2" not in docs
    assert f"deleted/{gone}" in docs and "refs/tags/bert/keep" not in docs
    # Another Store on the same storage (a fresh index) sees the same.
    other = Store.on(subject.backend) if subject.kind == "memory" else Store.open(subject.store.url)
    assert [c.name for c in other.list()] == ["bert/step-1"]
    other.close()


# -- gc, verify ------------------------------------------------------------------------------------------------------


def test_gc_removes_unreferenced_blobs_and_unclaimed_manifests_and_keeps_the_rest(subject):
    store = subject.store
    model = make_tiny_bert()
    store.save(model, "bert/step-1")
    _bump(model, "encoder.layer.0.attention.self.query.weight")
    store.save(model, "bert/step-2")
    kept = set(store.manifest("bert/step-1").blob_refs())
    own = set(store.manifest("bert/step-2").blob_refs()) - kept
    assert own
    own_bytes = sum(size for d, size in store.manifest("bert/step-2").blob_refs().items() if d in own)
    assert store.gc().blobs == ()  # everything is still referenced
    # A manifest no name claims: a save that died before its commit (it protects no blob).
    orphan = dataclasses.replace(store.manifest("bert/step-2"), name="bert/orphan").to_bytes()
    orphan_key = f"checkpoints/{manifest_id(orphan)}.json"
    assert subject.backend.documents.create(orphan_key, orphan)
    store.delete("bert/step-2")
    dry = store.gc(dry_run=True)
    assert not dry.executed and {d for d, _ in dry.blobs} == own and dry.manifests == (manifest_id(orphan),)
    assert subject.blob_digests() >= own and orphan_key in subject.document_keys()

    plan = store.gc()
    assert plan.executed and {d for d, _ in plan.blobs} == own
    assert plan.bytes_freed == own_bytes
    assert subject.blob_digests() == kept
    assert orphan_key not in subject.document_keys()
    assert store.verify().ok
    assert store.gc().blobs == ()


def test_verify_names_the_damaged_checkpoint_and_file_and_verified_loads_refuse(subject, tmp_path):
    store = subject.store
    model = make_tiny_bert()
    store.save(model, "bert/step-1")
    assert store.verify().ok and store.verify("bert/step-1").ok
    weights = store.manifest("bert/step-1").file("model.safetensors")
    blob = weights.blobs[-1]
    subject.flip_byte(blob.digest, blob.size // 2)

    report = store.verify()
    assert not report.ok and report.damaged == ("bert/step-1",)
    assert [(p.kind, p.checkpoint, p.file, p.digest) for p in report.problems] == [
        ("corrupt blob", "bert/step-1", "model.safetensors", blob.digest)]
    assert store.verify(deep=False).ok  # the size is right: only re-hashing finds it
    with pytest.raises(CorruptObject) as exc:
        store.load("bert/step-1", verify=True)
    assert "bert/step-1" in exc.value.message
    with pytest.raises(CorruptObject) as exc:
        store.load_state_dict("bert/step-1", verify=True)
    assert "bert/step-1" in exc.value.message and "model.safetensors" in exc.value.message
    with pytest.raises(CorruptObject):
        store.export("bert/step-1", tmp_path / "out", verify=True)
    assert not (tmp_path / "out").exists()

    subject.flip_byte(blob.digest, blob.size // 2)
    assert store.verify().ok


# -- retention -------------------------------------------------------------------------------------------------------


def test_retention_policy_prunes_on_save_and_prune_dry_run_changes_nothing(subject):
    store = subject.store
    store.set_policy("bert", RetentionPolicy(keep_last=2, keep_best=1, metric="eval_loss"))
    assert store.get_policy("bert").keep_last == 2
    assert "policies/bert.json" in subject.document_keys("policies/")
    model = make_tiny_bert()
    pruned = []
    for step, loss in ((1, 0.2), (2, 0.5), (3, 0.6), (4, 0.7)):
        _bump(model, "pooler.dense.bias")
        pruned += store.save(model, f"bert/step-{step}", metrics={"eval_loss": loss}).pruned
    assert pruned == ["bert/step-2"]
    assert sorted(c.name for c in store.list("bert")) == ["bert/step-1", "bert/step-3", "bert/step-4"]
    assert store.info("bert:best").name == "bert/step-1" and store.info("bert:latest").name == "bert/step-4"

    before = subject.document_keys()
    dry = store.prune("bert", RetentionPolicy(keep_last=1), dry_run=True)
    assert not dry.executed
    assert sorted(d.checkpoint.name for d in dry.plan.remove) == ["bert/step-3"]  # best and latest stay
    assert subject.document_keys() == before
    with store.hold("bert/step-3"):  # a reader's lease (a resume) keeps it from a prune meanwhile
        assert store.prune("bert", RetentionPolicy(keep_last=1), dry_run=True).plan.remove == ()
    done = store.prune("bert", RetentionPolicy(keep_last=1))
    assert done.executed and sorted(c.name for c in store.list("bert")) == ["bert/step-1", "bert/step-4"]


# -- training: manager, checkout, convert -----------------------------------------------------------------------------


def _train_step(model, optimizer) -> None:
    ids = torch.randint(1, 99, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def _fresh_training(seed: int):
    model = make_tiny_bert(seed, "BertForMaskedLM").train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _assert_same_optimizer_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for name, value in sa["state"][k].items():
            other = sb["state"][k][name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


@pytest.mark.parametrize("async_save", [False, True])
def test_checkpoint_manager_round_trip_and_checkout(subject, tmp_path, async_save, tree_sha256):
    torch.manual_seed(0)
    model, optimizer = _fresh_training(0)
    for _ in range(2):
        _train_step(model, optimizer)
    with CheckpointManager(subject.store, "loop", async_save=async_save) as manager:
        manager.save(2, model, optimizer, metrics={"loss": 1.0}, extra={"note": "hello"})
        manager.wait()
        restored, restored_opt = _fresh_training(1)
        step, extra = manager.restore(restored, restored_opt)
    assert step == 2 and extra == {"note": "hello"}
    want = model.state_dict()
    got = restored.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    _assert_same_optimizer_state(optimizer, restored_opt)

    # The checkpoint checks out as a folder holding exactly what export gives.
    dest = subject.store.checkout("loop:latest", tmp_path / "resume")
    subject.store.export("loop:latest", tmp_path / "export")
    assert tree_sha256(dest) == tree_sha256(tmp_path / "export")
    assert any(p.startswith("optimizer") for p in tree_sha256(dest))


def test_checkout_refuses_weights_alone_and_writes_a_trainer_folder_back(subject, tmp_path, tree_sha256):
    store = subject.store
    store.save(make_tiny_bert(), "bert/step-1")
    with pytest.raises(IncompleteCheckpoint):
        store.checkout("bert/step-1", tmp_path / "refused")
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())

    src = tmp_path / "checkpoint-4"
    model, optimizer = _fresh_training(0)
    _train_step(model, optimizer)
    model.save_pretrained(src)
    torch.save(optimizer.state_dict(), src / "optimizer.pt")
    (src / "trainer_state.json").write_text('{"global_step": 4, "log_history": []}')
    store.save(src, "trainer/checkpoint-4")
    store.checkout("trainer/checkpoint-4", tmp_path / "resume")
    assert tree_sha256(tmp_path / "resume") == tree_sha256(src)


def test_convert_to_bf16_is_a_child_checkpoint_with_cast_weights(subject, tmp_path):
    store = subject.store
    model = make_tiny_bert()
    base = store.save(model, "bert/base")
    half = store.convert("bert/base", dtype="bf16")
    assert half.parent == base.id and half.name != base.name
    state = store.load_state_dict(half.id)
    want = model.state_dict()
    assert set(state) == set(want)
    assert all(state[k].dtype == torch.bfloat16 and torch.equal(state[k], want[k].to(torch.bfloat16)) for k in want)
    loaded = store.load(half.id, dtype=torch.bfloat16)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    _assert_committed_under_the_seam(subject, [base, half])
    assert store.verify().ok


# -- reading around a checkpoint: tokenizer, import, diff, du, inspection, validation, reindex ---------------------


def test_tokenizer_import_diff_du_describe_validate_and_reindex(subject, tmp_path, tokenizer):
    store = subject.store
    model = make_tiny_bert(cls_name="BertForMaskedLM")
    first = store.save(model, "mlm/step-1", tokenizer=tokenizer, metrics={"eval_loss": 1.0})
    assert store.load_tokenizer("mlm/step-1")("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]

    changed = "bert.encoder.layer.0.output.dense.weight"
    _bump(model, changed)
    folder = tmp_path / "imports" / "step-2"
    model.save_pretrained(folder)
    report = store.import_folder(folder, run="mlm")
    assert [i.status for i in report.items] == ["added"]
    second = store.info(report.items[0].id)

    diff = store.diff(first.id, second.id)
    assert [t.name for t in diff.tensors_changed] == [changed] and diff.tensors_read == 1
    usage = store.du()
    assert usage.checkpoints == 2 and 0 < usage.stored_bytes < usage.logical_bytes
    assert usage.stored_bytes == sum(size for _, size, _ in subject.backend.blobs.iter())
    described = store.describe("mlm/step-1")
    assert described["name"] == "mlm/step-1"
    assert store.validate(second.id).ok
    unfit = store.validate("mlm/step-1")  # MiniLM's tokenizer has more tokens than the tiny model's embeddings
    assert not unfit.ok and "resize_token_embeddings" in str(unfit.findings)
    assert [c.name for c in store.log("mlm")] == ["mlm/step-1", second.name]

    assert store.reindex() == 2
    assert sorted(c.id for c in store.list()) == sorted([first.id, second.id])
    assert store.fsck().ok


def test_the_guard_sees_a_file_touched_outside_the_memory_store(tmp_path):
    """The memory store's guard is no empty promise: a file opened, listed or created elsewhere is recorded."""
    backend = MemoryBackend()
    guard = PathGuard([backend.scratch, str(tmp_path / "allowed")])
    elsewhere = tmp_path / "elsewhere"
    try:
        with pytest.MonkeyPatch.context() as mp:
            guard.install(mp)
            Path(backend.scratch, "tmp").mkdir()
            (tmp_path / "allowed").mkdir()
            (tmp_path / "allowed" / "a.txt").write_text("fine")
            elsewhere.mkdir()
            (elsewhere / "b.txt").write_bytes(b"x")
            os.listdir(elsewhere)
            Path.cwd().joinpath(".ckpt").exists()
    finally:
        backend.close()
    assert [what for what, _ in guard.outside] == ["os.mkdir", "open", "os.listdir", "os.stat"]
    assert guard.outside[0][1] == str(elsewhere) and guard.outside[-1][1] == str(Path.cwd() / ".ckpt")
