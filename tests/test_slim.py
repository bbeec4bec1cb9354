"""keep_training_state=N: older checkpoints lose optimizer, scheduler and RNG state, keep everything else, stay
loadable; checkout refuses them naming the newest resumable one; the id switch is crash-safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ckptstore import Store
from ckptstore.errors import TrainingStateDropped
from ckptstore.policies import StoragePolicy


@pytest.fixture(scope="module")
def trainer_folders(tmp_path_factory):
    """Three Trainer-like checkpoint folders of a tiny BERT: weights, optimizer.pt, scheduler.pt, rng_state.pth,
    trainer_state.json."""
    from tests.conftest import make_tiny_bert

    torch.manual_seed(0)
    model = make_tiny_bert()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    root = tmp_path_factory.mktemp("slim-src")
    folders = []
    for k in range(1, 4):
        model(input_ids=torch.randint(0, 99, (2, 8))).last_hidden_state.mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        folder = root / f"checkpoint-{k * 10}"
        model.save_pretrained(folder)
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
        torch.save({"cpu": torch.get_rng_state()}, folder / "rng_state.pth")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": k * 10, "log_history": []}))
        folders.append(folder)
    return folders


def _save(store: Store, folders) -> None:
    for i, folder in enumerate(folders):
        store.save(folder, f"run/step-{(i + 1) * 10}", metrics={"eval_loss": 1.0 / (i + 1)})


def test_keep_training_state_slims_older_checkpoints(store, trainer_folders, tmp_path, tree_sha256):
    store.save(trainer_folders[0], "run/step-10", metrics={"eval_loss": 1.0})
    store.tag("run/step-10", "first")
    store.annotate("run/step-10", message="the first one")
    store.set_storage("run", StoragePolicy(keep_training_state=1))
    store.save(trainer_folders[1], "run/step-20", metrics={"eval_loss": 0.5})
    store.save(trainer_folders[2], "run/step-30", metrics={"eval_loss": 0.7})
    names = [c.name for c in store.list("run", sort="step")]
    assert names == ["run/step-10", "run/step-20", "run/step-30"]
    first = store.show("run/step-10")
    paths = {f.path for f in store.manifest("run/step-10").files}
    assert not paths & {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
    assert {"model.safetensors", "config.json", "trainer_state.json"} <= paths
    assert first.metadata["slimmed"]["rule"] == "keep_training_state=1"
    assert set(first.metadata["slimmed"]["dropped"]) == {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
    # tags, metrics, annotations, step, lineage stay
    assert "first" in first.tags and first.metrics["eval_loss"] == 1.0 and first.message == "the first one"
    assert store.show("run:best").name == "run/step-20"
    assert [c.name if hasattr(c, "name") else c for c in store.lineage("run/step-30")][:3] == \
        ["run/step-30", "run/step-20", "run/step-10"]
    # the newest keeps its state, and the others still export and load
    assert "optimizer.pt" in {f.path for f in store.manifest("run/step-30").files}
    out = tmp_path / "out"
    store.export("run/step-10", out)
    want = {k: v for k, v in tree_sha256(trainer_folders[0]).items()
            if k not in ("optimizer.pt", "scheduler.pt", "rng_state.pth")}
    assert tree_sha256(out) == want
    assert store.load_state_dict("run/step-10")
    # checkout refuses, naming the newest resumable checkpoint
    with pytest.raises(TrainingStateDropped, match="run/step-30") as info:
        store.checkout("run/step-10", tmp_path / "resume")
    assert "keep_training_state=1" in info.value.message
    store.checkout("run/step-30", tmp_path / "resume")
    # gc reclaims the dropped state, verify is clean
    before = sum(s for _, s, _ in store._repo.blobs.iter())
    store.gc()
    assert sum(s for _, s, _ in store._repo.blobs.iter()) < before
    assert store.verify().ok


def test_show_says_the_state_was_dropped_and_checkout_refuses(ckpt, trainer_folders, tmp_path):
    for i, folder in enumerate(trainer_folders):
        assert ckpt("save", folder, f"run/step-{(i + 1) * 10}").code == 0
    assert ckpt("storage", "run", "--keep-training-state", "2").code == 0
    assert "drop training state beyond the newest 2" in ckpt("storage", "run").out
    res = ckpt("slim", "run")
    assert res.code == 0 and "run/step-10" in res.err
    shown = ckpt("show", "run/step-10")
    assert shown.code == 0
    assert "dropped by the run's policy (keep_training_state=2)" in shown.out
    assert "optimizer.pt" in shown.out
    assert "encodings" in shown.out and "raw" in shown.out
    refused = ckpt("checkout", "run/step-10", tmp_path / "resume")
    assert refused.code == 1
    assert "run/step-30" in refused.err and "keep_training_state=2" in refused.err


def test_slim_is_crash_safe_at_every_step(tmp_path, trainer_folders, tree_sha256):
    """A real process killed before the new manifest, before the claim switch, and after it: the checkpoint is
    always there, whole (old or slimmed), and the next slim finishes the job."""
    for point in ("slim.manifest", "slim.claim", "slim.release", "ref.write"):
        root = tmp_path / point.replace(".", "-")
        with Store.init(root) as store:
            _save(store, trainer_folders)
            store.tag("run/step-10", "keep")
        code = (
            "import sys; from ckptstore import Store; s = Store.open(sys.argv[1]); s.slim('run', 1)"
        )
        env = {**os.environ, "CKPT_FAILPOINT": f"{point}:kill@1"}
        proc = subprocess.run([sys.executable, "-c", code, str(root)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == -9, (point, proc.stderr)
        with Store.open(root) as store:
            assert [c.name for c in store.list("run", sort="step")] == ["run/step-10", "run/step-20", "run/step-30"]
            report = store.verify()
            # killed after the commit, before its tags moved: the tag dangles until the next slim moves it
            assert report.ok or (point == "ref.write" and {p.kind for p in report.problems} == {"dangling tag"})
            out = tmp_path / f"out-{point}"
            store.export("run/step-10", out)
            got = tree_sha256(out)
            assert got.items() <= tree_sha256(trainer_folders[0]).items()
            assert "model.safetensors" in got
            store.slim("run", 1)
            assert "slimmed" in store.show("run/step-10").metadata
            assert store.show("run:keep").name == "run/step-10"
            assert store.verify().ok
            store.gc()
            assert store.verify().ok
