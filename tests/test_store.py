"""The public `Store` API on a real store in tmp_path: opening, saving folders, listing, showing, tags, delete,
verify, gc, du, fsck, and how references resolve (name, RUN:TAG, id prefix, did-you-mean, ambiguity)."""

from __future__ import annotations

import json

import pytest

import ckptstore
from ckptstore import (
    AmbiguousReference,
    CheckpointInfo,
    CheckpointNotFound,
    CkptError,
    DestinationNotEmpty,
    InvalidArgument,
    InvalidName,
    NameExists,
    Store,
    StoreNotFound,
)

EXPECTED_PUBLIC = {
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
}


def test_public_surface_is_sorted_and_as_expected():
    # A change to the public surface must be deliberate: update EXPECTED_PUBLIC in the same commit.
    assert ckptstore.__all__ == sorted(ckptstore.__all__)
    assert set(ckptstore.__all__) == EXPECTED_PUBLIC
    for name in ckptstore.__all__:
        assert hasattr(ckptstore, name), name
    errors = [getattr(ckptstore, n) for n in ckptstore.__all__ if isinstance(getattr(ckptstore, n), type)]
    assert all(issubclass(e, CkptError) for e in errors if issubclass(e, Exception) and not issubclass(e, Warning))


# -- opening ----------------------------------------------------------------------------------------------------


def test_open_without_store_fails_with_hint(tmp_path):
    with pytest.raises(StoreNotFound) as exc:
        Store.open(tmp_path / "nowhere")
    assert "ckpt init" in exc.value.hint
    assert not (tmp_path / "nowhere").exists()


def test_init_writes_store_json_and_is_idempotent(tmp_path):
    root = tmp_path / "s"
    Store.init(root).close()
    cfg = json.loads((root / "store.json").read_text())
    assert cfg == {"format": 2, "hash": "blake3", "chunk_bytes": cfg["chunk_bytes"], "compression": "none", "id": cfg["id"]}
    assert len(cfg["id"]) == 32
    with Store.init(root) as again:
        assert again.list() == []
    with pytest.raises(InvalidArgument):
        Store.init(root, exist_ok=False)


def test_open_create_and_env_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_STORE", str(tmp_path / "from-env"))
    with Store.open(create=True) as s:
        assert s.root == tmp_path / "from-env"
    assert (tmp_path / "from-env" / "store.json").is_file()


# -- save, list, show ---------------------------------------------------------------------------------------------


def test_save_folder_records_what_was_given(store, tiny_bert_dir):
    parent = store.save(tiny_bert_dir, "bert/step-100")
    info = store.save(
        tiny_bert_dir, "bert/step-200", tags=["v1"], metrics={"eval_loss": 0.5}, metadata={"lr": 3e-5, "note": "x"},
        parent="bert/step-100", message="second",
    )
    assert isinstance(info, CheckpointInfo)
    sizes = {p.name: p.stat().st_size for p in tiny_bert_dir.iterdir()}
    assert (info.name, info.run, info.step) == ("bert/step-200", "bert", 200)
    assert info.tags == ("best", "latest", "v1")  # best and latest: the store's, for every run
    assert info.metrics == {"eval_loss": 0.5}
    assert info.metadata == {"lr": 3e-5, "note": "x"}
    assert info.parent == parent.id
    assert info.message == "second"
    assert info.logical_bytes == sum(sizes.values())
    assert info.file_count == len(sizes)
    assert len(info.id) == 64 and info.short_id == info.id[:12]
    assert (store.root / "checkpoints" / f"{info.id}.json").is_file()
    assert [c.name for c in store.lineage("bert/step-200")] == ["bert/step-200", "bert/step-100"]


def test_show_returns_the_same_record_as_list(store, tiny_bert_dir):
    store.save(tiny_bert_dir, "bert/step-1", metrics={"acc": 0.9})
    listed = store.list()[0]
    assert store.show("bert/step-1") == listed
    manifest = store.manifest("bert/step-1")
    assert manifest.model["model_type"] == "bert"
    assert manifest.model["parameters"] == sum(
        t.numel for f in manifest.files if f.is_safetensors for t in f.tensors
    )
    assert {f.path for f in manifest.files} == {p.name for p in tiny_bert_dir.iterdir()}


def test_list_is_newest_first_and_filters_by_run(store, tiny_bert_dir):
    for name in ("a/step-1", "b/step-1", "a/step-2", "a/step-10"):
        store.save(tiny_bert_dir, name)
    assert [c.name for c in store.list()] == ["a/step-10", "a/step-2", "b/step-1", "a/step-1"]
    assert [c.name for c in store.list("a")] == ["a/step-10", "a/step-2", "a/step-1"]
    assert store.list("nope") == []
    assert store.runs() == ["a", "b"]


def test_existing_name_is_refused_and_nothing_is_added(store, tiny_bert_dir):
    store.save(tiny_bert_dir, "bert/step-1")
    manifests = sorted((store.root / "checkpoints").iterdir())
    with pytest.raises(NameExists) as exc:
        store.save(tiny_bert_dir, "bert/step-1", metadata={"other": 1})
    assert "bert/step-1" in str(exc.value) and exc.value.hint
    assert sorted((store.root / "checkpoints").iterdir()) == manifests


@pytest.mark.parametrize("name", ["../x", "/abs", "a//b", "a/", "", "a/./b", "sp ace", "a\\b", "C:/x"])
def test_invalid_names_are_refused_before_anything_is_written(store, tiny_bert_dir, name):
    with pytest.raises(InvalidName):
        store.save(tiny_bert_dir, name)
    assert list((store.root / "objects").iterdir()) == []
    assert list((store.root / "checkpoints").iterdir()) == []


@pytest.mark.parametrize("metrics", [{"loss": float("nan")}, {"loss": "high"}, {"": 1.0}])
def test_bad_metrics_are_refused(store, tiny_bert_dir, metrics):
    with pytest.raises(InvalidArgument):
        store.save(tiny_bert_dir, "bert/x", metrics=metrics)
    assert store.list() == []


def test_metadata_json_cannot_hold_is_refused_before_anything_is_written(store, tiny_bert_dir):
    with pytest.raises(InvalidArgument, match="metadata cannot be stored as JSON"):
        store.save(tiny_bert_dir, "m/step-1", metadata={"optimizer": object()})
    assert store.list() == [] and store.du().stored_bytes == 0


def test_bad_steps_and_sources_are_refused_with_a_hint(store, tiny_bert_dir, tmp_path):
    for step in (-5, 1.5, True):
        with pytest.raises(InvalidArgument, match="step must be a whole number") as info:
            store.save(tiny_bert_dir, "s/x", step=step)
        assert info.value.hint
    with pytest.raises(InvalidArgument, match="Cannot save a int") as info:
        store.save(123, "s/x")
    assert info.value.hint
    assert store.list() == []
    store.save(tiny_bert_dir, "s/ok")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DestinationNotEmpty, match="is a file, not a folder"):
        store.export("s/ok", tmp_path / "a-file")


def test_a_single_tag_string_is_one_tag(store, tiny_bert_dir):
    assert store.save(tiny_bert_dir, "t/step-1", tags="prod").tags == ("latest", "prod")


def test_saving_the_folder_that_holds_the_store_leaves_the_store_out(tiny_bert_dir, tree_sha256, tmp_path):
    """`ckpt save . NAME` inside the model folder, with the default store ./.ckpt in it."""
    original = tree_sha256(tiny_bert_dir)
    with Store.init(tiny_bert_dir / ".ckpt") as inside:
        inside.save(tiny_bert_dir, "m/step-1")
        inside.save(tiny_bert_dir, "m/step-2")  # the store now has objects, an index, locks: none of it is saved
        assert {f.path for f in inside.manifest("m/step-2").files} == set(original)
        assert tree_sha256(inside.export("m/step-2", tmp_path / "out")) == original


def test_init_refuses_a_folder_that_holds_other_files(tiny_bert_dir, tmp_path):
    before = sorted(p.name for p in tiny_bert_dir.iterdir())
    with pytest.raises(InvalidArgument, match="already holds files .* and is not a store"):
        Store.init(tiny_bert_dir)
    assert sorted(p.name for p in tiny_bert_dir.iterdir()) == before
    (tmp_path / "half" / "objects").mkdir(parents=True)  # an interrupted init is simply re-run
    Store.init(tmp_path / "half").close()
    assert (tmp_path / "half" / "store.json").is_file()


def test_live_model_with_tokenizer_loads_its_tokenizer(store, tiny_bert, minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    store.save(tiny_bert(), "bert/with-tok", tokenizer=tok)
    back = store.load_tokenizer("bert/with-tok")
    text = "Checkpoints stored once."
    assert back(text)["input_ids"] == tok(text)["input_ids"]


def test_load_tokenizer_without_tokenizer_files_says_so(store, tiny_bert_dir):
    store.save(tiny_bert_dir, "bert/no-tok")
    with pytest.raises(ckptstore.IncompleteCheckpoint, match="no tokenizer"):
        store.load_tokenizer("bert/no-tok")


# -- references ---------------------------------------------------------------------------------------------------


def test_references_resolve_name_tag_and_id_prefix(store, tiny_bert_dir):
    a = store.save(tiny_bert_dir, "bert/step-500", tags=["chosen"])
    b = store.save(tiny_bert_dir, "bert/step-600")
    assert store.resolve("bert/step-500") == a.id
    assert store.resolve("bert:chosen") == a.id
    assert store.resolve(a.id) == a.id
    assert store.resolve(a.id[:8]) == a.id
    assert store.resolve(a.id[:8].upper()) == a.id
    assert store.info(b.id[:6]).name == "bert/step-600"


def test_tag_belongs_to_the_checkpoints_run_and_moves(store, tiny_bert_dir):
    a = store.save(tiny_bert_dir, "bert/step-1")
    b = store.save(tiny_bert_dir, "bert/step-2")
    other = store.save(tiny_bert_dir, "gpt/step-1")
    assert store.tag("bert/step-1", "v1.0.0").tags == ("v1.0.0",)
    assert store.resolve("bert:v1.0.0") == a.id
    store.tag(b.id[:10], "v1.0.0")  # moves
    assert store.resolve("bert:v1.0.0") == b.id
    assert store.info("bert/step-1").tags == ()
    store.tag("gpt/step-1", "v1.0.0")  # same tag, other run: independent
    assert store.resolve("gpt:v1.0.0") == other.id
    assert store.resolve("bert:v1.0.0") == b.id
    assert store.untag("bert:v1.0.0") == b.id
    with pytest.raises(CheckpointNotFound):
        store.resolve("bert:v1.0.0")
    with pytest.raises(CheckpointNotFound):
        store.untag("bert:v1.0.0")
    with pytest.raises(InvalidArgument):
        store.untag("no-colon")
    with pytest.raises(InvalidName):
        store.tag("bert/step-1", "a/b")
    assert store.resolve("gpt:v1.0.0") == other.id


def test_tag_operations_on_a_freshly_opened_store(store, tiny_bert_dir):
    # Each CLI command opens the store anew; untag must not depend on an index some earlier call opened.
    info = store.save(tiny_bert_dir, "bert/step-1", tags=["rc"])
    store.close()
    with Store.open(store.root) as fresh:
        assert fresh.untag("bert:rc") == info.id
    with Store.open(store.root) as fresh:
        assert fresh.list()[0].tags == ("latest",)
        fresh.close()
        assert fresh.tag("bert/step-1", "v2").tags == ("latest", "v2")


def test_unknown_name_suggests_close_names(store, tiny_bert_dir):
    store.save(tiny_bert_dir, "bert-sst2/step-500")
    with pytest.raises(CheckpointNotFound) as exc:
        store.resolve("bert-sst2/step-50")
    err = exc.value
    assert isinstance(err, LookupError)
    assert err.ref == "bert-sst2/step-50"
    assert "bert-sst2/step-500" in err.candidates
    assert "Did you mean 'bert-sst2/step-500'?" in err.message
    assert "ckpt ls bert-sst2" in err.hint


def test_unknown_tag_suggests_tags_of_the_run(store, tiny_bert_dir):
    store.save(tiny_bert_dir, "bert/step-1", tags=["v1.0.0"])
    with pytest.raises(CheckpointNotFound) as exc:
        store.resolve("bert:v1.0")
    assert exc.value.candidates[0] == "bert:v1.0.0"


def test_an_id_prefix_too_short_says_how_long_it_must_be(store, tiny_bert_dir):
    info = store.save(tiny_bert_dir, "bert/v1")
    with pytest.raises(CheckpointNotFound) as exc:
        store.resolve(info.id[:3])
    assert "at least 4 hex digits" in exc.value.hint
    assert store.resolve(info.id[:4]) == info.id


def test_unknown_hex_ref_is_not_found(store, tiny_bert_dir):
    info = store.save(tiny_bert_dir, "bert/step-1")
    missing = next(c for c in "0123456789abcdef" if c != info.id[0]) * 8
    with pytest.raises(CheckpointNotFound):
        store.resolve(missing)
    with pytest.raises(CheckpointNotFound):  # too short to be taken as an id prefix
        store.resolve(info.id[:3])


def test_ambiguous_prefix_lists_every_candidate(store, ambiguous_pair):
    prefix, ((name1, id1), (name2, id2)) = ambiguous_pair
    with pytest.raises(AmbiguousReference) as exc:
        store.resolve(prefix)
    err = exc.value
    assert isinstance(err, LookupError)
    assert len(err.candidates) == 2
    for name, cid in ((name1, id1), (name2, id2)):
        assert any(cid[:12] in c and name in c for c in err.candidates)
        assert name in err.message
    # One more digit (where the ids differ) resolves.
    n = next(i for i in range(64) if id1[i] != id2[i]) + 1
    assert store.resolve(id1[:n]) == id1


# -- delete, verify, gc, du, fsck ------------------------------------------------------------------------------------


def test_delete_removes_manifest_and_tags_but_plans_first(store, tiny_bert_dir):
    keep = store.save(tiny_bert_dir, "bert/step-1")
    gone = store.save(tiny_bert_dir, "bert/step-2", tags=["rc"], metadata={"differs": True})
    plan = store.delete("bert/step-2", dry_run=True)
    assert not plan.executed and [c.name for c in plan.checkpoints] == ["bert/step-2"] and plan.tags == ("bert:rc",)
    assert store.resolve("bert:rc") == gone.id
    done = store.delete(["bert:rc"])
    assert done.executed
    assert [c.id for c in store.list()] == [keep.id]
    assert not (store.root / "checkpoints" / f"{gone.id}.json").exists()
    assert not (store.root / "refs" / "tags" / "bert" / "rc").exists()
    with pytest.raises(CheckpointNotFound):
        store.delete("bert/step-2")


def test_verify_gc_du_fsck_on_a_healthy_store(store, tiny_bert_dir):
    a = store.save(tiny_bert_dir, "bert/step-1")
    store.save(tiny_bert_dir, "other/step-1")
    report = store.verify()
    assert report.ok and report.checkpoints == 2 and report.deep
    assert report.bytes_checked == sum(p.stat().st_size for p in (store.root / "objects").rglob("*") if p.is_file())
    assert store.verify("bert/step-1").checkpoints == 1
    assert store.fsck().ok and not store.fsck().deep
    plan = store.gc()
    assert plan.executed and plan.blobs == () and plan.bytes_freed == 0
    usage = store.du()
    assert usage.checkpoints == 2
    assert usage.logical_bytes == 2 * a.logical_bytes
    on_disk = sum(p.stat().st_size for p in (store.root / "objects").rglob("*") if p.is_file())
    assert usage.stored_bytes == on_disk <= a.logical_bytes  # the second checkpoint is stored once
    assert usage.ratio >= 2.0
    assert {r.run: r.unique_bytes for r in usage.runs} == {"bert": 0, "other": 0}
