"""AcceleratorCheckpoints with a real accelerate Accelerator on CPU, training a tiny BERT."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

accelerate = pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

from ckptstore.errors import CheckpointNotFound, IncompleteCheckpoint  # noqa: E402
from ckptstore.integrations.accelerate import AcceleratorCheckpoints, load_state, save_state  # noqa: E402
from ckptstore.policies import RetentionPolicy  # noqa: E402

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 4
LOSSES = {4: 0.5, 8: 0.2, 12: 0.9, 16: 0.7, 20: 0.8}  # the "eval_loss" each save reports


def build(seed):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # a fresh Accelerator, as in a new process
    acc = accelerate.Accelerator(cpu=True)
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(config)  # dropout: the RNG matters
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randint(0, 40, (16, 8), generator=g),
                                          torch.randint(0, 2, (16,), generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=16 // STEPS_PER_EPOCH, shuffle=True)
    model, opt, loader, sched = acc.prepare(model, opt, loader, sched)
    return acc, model, opt, loader, sched


def train(store, run, epochs, *, resume=False, seed=0, policy=None, **kwargs):
    acc, model, opt, loader, sched = build(seed)
    checkpoints = AcceleratorCheckpoints(acc, store, run, policy, metric="eval_loss", **kwargs)
    step = 0
    if resume:
        step = checkpoints.load_state().step
    else:
        torch.manual_seed(1234)
    model.train()
    for _ in range(step // STEPS_PER_EPOCH, epochs):
        for x, y in loader:
            acc.backward(model(input_ids=x, labels=y).loss)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
        checkpoints.save_state(step, metrics={"eval_loss": LOSSES[step]})
    return model, opt, checkpoints


def test_save_then_resume_from_the_store_is_exact(store, tmp_path):
    tmp_path = tmp_path / "stage"
    tmp_path.mkdir()
    whole, whole_opt, _ = train(store, "whole", 3, staging_dir=tmp_path)
    train(store, "cut", 2, staging_dir=tmp_path)
    assert [c.name for c in store.log("cut")] == ["cut/step-4", "cut/step-8"]
    files = {f.path for f in store.manifest("cut:latest").files}
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= files
    assert not list(tmp_path.iterdir())  # the staging folders are gone

    resumed, resumed_opt, checkpoints = train(store, "cut", 3, resume=True, seed=7, staging_dir=tmp_path)
    assert checkpoints.resumed_from.name == "cut/step-8"
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    a, b = whole_opt.state_dict(), resumed_opt.state_dict()
    for pid, st in a["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["state"][pid][k]), (pid, k)
    assert store.info("cut/step-12").parent == store.resolve("cut/step-8")
    assert store.verify("cut:latest").ok


def test_retention_after_a_resume_keeps_the_right_checkpoints(store, tmp_path):
    tmp_path = tmp_path / "stage"
    tmp_path.mkdir()
    policy = RetentionPolicy(keep_last=2, keep_best=1, metric="eval_loss")
    train(store, "ret", 3, policy=policy, staging_dir=tmp_path)   # steps 4, 8, 12
    train(store, "ret", 5, resume=True, staging_dir=tmp_path)     # from 12: steps 16, 20
    # the best (8: 0.2) and the last two (16, 20); 4 and 12 are gone, whichever process saved them
    assert sorted(c.step for c in store.list("ret")) == [8, 16, 20]
    assert store.info("ret:best").name == "ret/step-8"
    assert store.gc(dry_run=True).blobs == ()  # the pruned checkpoints' blobs were freed after the saves


def test_functions_and_errors(store, tmp_path, tiny_bert):
    acc, model, opt, loader, sched = build(0)
    info = save_state(acc, store, "fn", step=3, metrics={"eval_loss": 0.4})
    assert info.name == "fn/step-3" and info.metrics == {"eval_loss": 0.4}
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    assert load_state(acc, store, "fn:best").name == "fn/step-3"
    assert torch.equal(model.classifier.weight, store.load_state_dict("fn/step-3")["classifier.weight"])

    with pytest.raises(CheckpointNotFound) as err:
        load_state(acc, store, "fn:lates")
    assert str(err.value).startswith("Unknown reference 'fn:lates'. Did you mean 'fn:latest'")
    assert "ckpt ls" in err.value.hint
    store.save(tiny_bert(), "fn/exported")
    with pytest.raises(IncompleteCheckpoint) as err:
        load_state(acc, store, "fn/exported")
    assert "not saved by Accelerator.save_state" in str(err.value) and "ckpt ls fn" in err.value.hint
    assert AcceleratorCheckpoints(acc, store, "fresh").load_state() is None


def test_two_processes_save_every_rng_state_and_resume_exactly(store, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    worker = Path(__file__).with_name("accelerate_worker.py")

    def job(*args):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = []
        src = os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")])
        for rank in range(2):
            env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
                   "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2", "PYTHONPATH": src}
            procs.append(subprocess.Popen([sys.executable, str(worker), str(store.root), str(stage), *args], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for p in procs:
            out, _ = p.communicate(timeout=300)
            assert p.returncode == 0, out[-3000:]

    job("whole", "3")
    job("cut", "2")
    store.refresh()
    files = {f.path for f in store.manifest("cut:latest").files}
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors"} <= files  # every rank's RNG
    job("cut", "3", "resume")
    store.refresh()
    assert [c.step for c in store.log("cut")] == [4, 8, 12]
    whole = torch.load(stage / "final-whole.pt", weights_only=True)
    cut = torch.load(stage / "final-cut.pt", weights_only=True)
    for key, value in whole.items():
        assert torch.equal(value, cut[key]), key
    assert sorted(p.name for p in stage.iterdir()) == ["final-cut.pt", "final-whole.pt"]
