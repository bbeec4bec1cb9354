"""validate and verify record what they found: on the checkpoint (its annotation, metadata keys `validation` and
`verification`) and, for a store-wide verify, in reports/verify.json; `ckpt show` prints them; a store this
process can only read records nothing and the commands still work."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from storefiles import blob_path
from test_read_only_store_new import cache_home, ro_store  # noqa: F401 - fixtures: a real read-only mount

from ckptstore import Store


def _nan_model(tiny_bert):
    model = tiny_bert(seed=1)
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.weight[3, 4] = float("nan")
    return model


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_validate_records_passed_and_a_nan_model_records_failed_with_the_finding(store, tiny_bert):
    store.save(tiny_bert(), "run/step-1", metadata={"lr": 0.1})
    store.save(_nan_model(tiny_bert), "run/step-2")
    assert store.check_results("run/step-1") == {"validation": None, "verification": None}
    before = time.time()
    assert store.validate("run/step-1").ok
    assert not store.validate("run/step-2").ok

    good = store.check_results("run/step-1")["validation"]
    assert good["passed"] is True and good["errors"] == []
    assert good["checks"] == ["loads", "finite", "forward"]
    assert before <= good["at"] <= time.time()
    assert good["model_class"] == "BertModel" and good["ckptstore"] and good["transformers"]
    assert any("no tokenizer stored" in w for w in good["warnings"])
    bad = store.check_results("run/step-2")["validation"]
    assert bad["passed"] is False
    assert bad["errors"] == ["tensor 'encoder.layer.0.attention.self.query.weight' contains 1 NaN"]

    # The record lives beside the manifest: the user's metadata is kept, the checkpoint is not re-saved, and a
    # reopened store (another process) sees it.
    info = store.info("run/step-1")
    assert info.metadata["lr"] == 0.1
    reopened = Store.open(store.root)
    try:
        assert reopened.check_results("run/step-1")["validation"] == good
    finally:
        reopened.close()
    annotation = json.loads((Path(store.root) / "annotations" / f"{info.id}.json").read_text())
    assert annotation["metadata"]["validation"] == good
    # A second run replaces the record whole.
    time.sleep(0.01)
    assert store.validate("run/step-1").ok
    assert store.check_results("run/step-1")["validation"]["at"] > good["at"]


def test_cli_validate_records_and_show_prints_one_line(store, tiny_bert, ckpt):
    store.save(tiny_bert(), "run/step-1", metadata={"lr": 0.1})
    store.save(_nan_model(tiny_bert), "run/step-2")
    assert "validated" not in ckpt("show", "run/step-1").out
    assert ckpt("validate", "run/step-1").code == 0
    assert ckpt("validate", "run/step-2").code == 1
    day = time.strftime("%Y-%m-%d", time.gmtime())
    lines = {line.split(None, 1)[0]: line for line in ckpt("show", "run/step-1").out.splitlines() if line.strip()}
    assert lines["validated"].split(None, 1)[1].startswith(f"passed {day} ")
    assert lines["validated"].endswith("UTC (loads, finite, forward)")
    assert lines["metadata"].split(None, 1)[1] == "lr: 0.1"  # the record has its own row, not a metadata one
    shown = ckpt("show", "run/step-2").out
    assert "validated" in shown and "FAILED" in shown
    assert "tensor 'encoder.layer.0.attention.self.query.weight' contains 1 NaN" in shown
    assert json.loads(ckpt("show", "run/step-2", "--json").out)["metadata"]["validation"]["passed"] is False


def test_verify_of_a_damaged_blob_records_the_checkpoint_named(store, tiny_bert, ckpt):
    store.save(tiny_bert(seed=0), "run/step-1")
    info = store.save(tiny_bert(seed=1), "run/step-2")
    assert store.last_verify() is None
    assert ckpt("verify").code == 0
    ok = store.last_verify()
    assert ok["passed"] is True and ok["checkpoints"] == 2 and ok["damaged"] == [] and ok["deep"] is True
    assert ok["blobs"] > 0 and ok["problem_count"] == 0

    own = {b.digest for f in store.manifest("run/step-2").files for b in f.blobs} - {
        b.digest for f in store.manifest("run/step-1").files for b in f.blobs}
    digest = min(own)
    _flip(blob_path(store, digest), 0)
    assert ckpt("verify").code == 1
    last = store.last_verify()
    assert last["passed"] is False and last["damaged"] == ["run/step-2"] and last["damaged_count"] == 1
    assert last["problem_count"] == 1 and "run/step-2" in last["problems"][0] and "corrupt blob" in last["problems"][0]
    assert last["at"] >= ok["at"]
    doc = json.loads((Path(store.root) / "reports" / "verify.json").read_text())
    assert doc["format"] == 1 and doc["damaged"] == ["run/step-2"]
    # A store-wide verify records on the store, not on each checkpoint.
    assert store.check_results("run/step-2")["verification"] is None

    # A verify of one checkpoint records on that checkpoint, and leaves the store's last verify alone.
    assert ckpt("verify", "run/step-2").code == 1
    assert ckpt("verify", "run/step-1", "--quick").code == 0
    mine = store.check_results(info.id)["verification"]
    assert mine["passed"] is False and mine["deep"] is True and mine["problem_count"] == 1
    assert digest[:12] in mine["problems"][0]
    assert store.check_results("run/step-1")["verification"]["passed"] is True
    assert store.check_results("run/step-1")["verification"]["deep"] is False
    assert store.last_verify() == last
    shown = ckpt("show", "run/step-2").out
    assert "verified" in shown and "FAILED" in shown and "corrupt blob" in shown


def test_read_only_store_records_nothing_and_does_not_fail(ro_store, ckpt, cache_home):  # noqa: F811
    for args in (("validate", "bert/step-1"), ("verify",), ("verify", "bert/step-2")):
        r = ckpt(*args, "--store", ro_store)
        assert r.code == 0, (args, r.err)
        assert "Traceback" not in r.err
    with Store.open(ro_store) as store:
        assert store.read_only
        assert store.validate("bert/step-1").ok and store.verify().ok
        assert store.last_verify() is None
        assert store.check_results("bert/step-1") == {"validation": None, "verification": None}
        assert store.check_results("bert/step-2") == {"validation": None, "verification": None}
    assert not (ro_store / "reports").exists() and not (ro_store / "annotations").exists()
    assert "validated" not in ckpt("show", "bert/step-1", "--store", ro_store).out


def test_a_damaged_verify_report_is_no_report(store, tiny_bert):
    store.save(tiny_bert(), "run/step-1")
    store.verify()
    path = Path(store.root) / "reports" / "verify.json"
    path.write_text("{not json")
    assert store.last_verify() is None
    store.verify()  # the next verify replaces it
    assert store.last_verify()["passed"] is True


def test_a_users_own_metadata_under_the_key_is_no_record(store, tiny_bert, ckpt):
    store.save(tiny_bert(), "run/step-1", metadata={"validation": {"by": "ana"}})
    assert store.check_results("run/step-1") == {"validation": None, "verification": None}
    shown = ckpt("show", "run/step-1").out
    assert 'validation: {"by": "ana"}' in shown and "validated" not in shown
    assert store.validate("run/step-1").ok  # a validate replaces it with its record
    assert store.check_results("run/step-1")["validation"]["passed"] is True


def test_fsck_records_nothing(store, tiny_bert, ckpt):
    store.save(tiny_bert(), "run/step-1")
    assert ckpt("fsck").code == 0 and ckpt("fsck", "--reindex").code == 0
    assert store.last_verify() is None and not (Path(store.root) / "reports").exists()
    assert ckpt("verify", "--quick").code == 0
    assert store.last_verify()["deep"] is False
