"""StoreCheckpointIO with real Lightning Trainer runs: a tiny LightningModule wrapping a tiny BERT, on CPU."""

from __future__ import annotations

import os

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")
transformers = pytest.importorskip("transformers")

from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402

from ckptstore.errors import CheckpointNotFound, UnsafePickle  # noqa: E402
from ckptstore.integrations.lightning import OBJECTS_FILE, StoreCheckpointIO  # noqa: E402
from ckptstore.policies import RetentionPolicy  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    # Lightning's advice for real runs (more dataloader workers, a logger, ...) is beside the point here.
    pytest.mark.filterwarnings("ignore::UserWarning:pytorch_lightning.*"),
    pytest.mark.filterwarnings("ignore::UserWarning:lightning_fabric.*"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*GPU available:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]

SCORES = [0.5, 0.2, 0.9, 0.7, 0.8]  # "score" logged at the end of epochs 0..4, lower is better


class TinyBertModule(pl.LightningModule):
    def __init__(self, seed: int = 0, scripted: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=24, max_position_embeddings=16, num_labels=2)
        self.model = transformers.BertForSequenceClassification(config)  # dropout 0.1: the RNG matters
        self.scripted = scripted

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.model(input_ids=x, labels=y).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", self.model(input_ids=x, labels=y).loss)
        if self.scripted:
            self.log("score", SCORES[self.current_epoch])

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


def loaders():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 40, (16, 8), generator=g), torch.randint(0, 2, (16,), generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    return (torch.utils.data.DataLoader(data, batch_size=4, shuffle=True),
            torch.utils.data.DataLoader(data, batch_size=8))


def trainer(tmp_path, epochs, plugins=(), callbacks=(), **kwargs):
    kwargs.setdefault("num_sanity_val_steps", 0)
    return pl.Trainer(default_root_dir=tmp_path, max_epochs=epochs, plugins=list(plugins), callbacks=list(callbacks),
                      logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                      **kwargs)


def fit(tmp_path, store, run, epochs, *, ckpt_path=None, seed=0, top_k=-1, monitor="val_loss", scripted=False,
        dirpath=None, plugin_only=False, **kwargs):
    io = StoreCheckpointIO(store, run)
    checkpoint = ModelCheckpoint(dirpath=dirpath or tmp_path / "ckpts", monitor=monitor, mode="min", save_top_k=top_k)
    t = trainer(tmp_path, epochs, plugins=[io], callbacks=[checkpoint] if plugin_only else [io, checkpoint], **kwargs)
    module = TinyBertModule(seed, scripted=scripted)
    train, val = loaders()
    torch.manual_seed(1234)  # the same stream for every run; a resume must carry it on from the checkpoint
    t.fit(module, train, val, ckpt_path=ckpt_path)
    return module, t, io


def test_saves_land_in_the_store_and_a_resume_is_exact(tmp_path, store):
    # A sanity check at every start draws from the generators: the resume must still follow the same stream.
    whole, _, _ = fit(tmp_path / "a", store, "whole", 3, num_sanity_val_steps=1)

    fit(tmp_path / "b", store, "cut", 2, num_sanity_val_steps=1)
    assert [c.name for c in store.log("cut")] == ["cut/step-4", "cut/step-8"]
    saved = store.info("cut:latest")
    assert saved.step == 8 and saved.metadata["epoch"] == 1
    assert {"val_loss", "train_loss"} <= set(saved.metrics)
    assert not any(p.suffix == ".ckpt" for p in (tmp_path / "b").rglob("*"))  # nothing left on the local disk

    # A new process: another init, the store reference as ckpt_path.
    resumed, t, io = fit(tmp_path / "b", store, "cut", 3, ckpt_path="cut:latest", seed=7, num_sanity_val_steps=1)
    assert t.global_step == 12
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    a, b = whole.optimizers().optimizer.state_dict(), resumed.optimizers().optimizer.state_dict()
    for pid, st in a["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["state"][pid][k]), (pid, k)
    assert [c.name for c in store.log("cut")] == [f"cut/step-{s}" for s in (4, 8, 12)]
    assert store.info("cut/step-12").parent == store.resolve("cut/step-8")  # lineage across the resume


def test_files_are_safetensors_and_json_and_export_loads_with_from_pretrained(tmp_path, store):
    module, _, _ = fit(tmp_path, store, "hf", 1)
    files = {f.path for f in store.manifest("hf:latest").files}
    assert {"model.safetensors", "config.json", "optimizer.safetensors", "lightning/checkpoint.json",
            "lightning/tensors.safetensors"} <= files
    assert not any(p.endswith((".pt", ".bin", ".pkl", ".ckpt")) for p in files)  # no pickle anywhere

    out = store.export("hf:latest", tmp_path / "export")
    loaded = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    module.model.eval()
    ids = torch.randint(0, 40, (2, 8))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, module.model(input_ids=ids).logits)


def test_top_k_after_a_resume_into_a_new_folder_keeps_the_right_best(tmp_path, store):
    # Epochs 0-2 score 0.5, 0.2, 0.9; the resume runs in a new folder (a new logger version), where Lightning
    # does not reload its best_k_models (#19844) and would keep the first two after the resume instead.
    fit(tmp_path, store, "topk", 3, monitor="score", top_k=2, scripted=True, dirpath=tmp_path / "v0")
    assert store.get_policy("topk") == RetentionPolicy(keep_best=2, metric="score", mode="min")
    assert store.best_metric("topk") == ("score", "min")
    fit(tmp_path, store, "topk", 5, monitor="score", top_k=2, scripted=True, dirpath=tmp_path / "v1",
        ckpt_path="topk:latest")
    # scores by step: 4: 0.5, 8: 0.2, 12: 0.9, 16: 0.7, 20: 0.8 -> the best two (8, 4) and the latest (20)
    assert sorted(c.step for c in store.list("topk")) == [4, 8, 20]
    best = store.info("topk:best")
    assert best.name == "topk/step-8" and best.metrics["score"] == pytest.approx(0.2)

    # ckpt_path="RUN:best" loads exactly that checkpoint.
    module = TinyBertModule(seed=3, scripted=True)
    io = StoreCheckpointIO(store, "topk", policy=None)
    t = trainer(tmp_path / "eval", 1, plugins=[io], callbacks=[io])
    t.validate(module, loaders()[1], ckpt_path="topk:best", verbose=False)
    stored = store.load_state_dict("topk/step-8")
    for key, value in module.model.state_dict().items():
        assert torch.equal(value, stored[key]), key


def test_plugin_alone_maps_lightnings_removals_to_the_store(tmp_path, store):
    # Without the callback role the run has no policy: ModelCheckpoint(save_top_k=1) keeps the newest only, and
    # its requests to remove the previous file delete the previous checkpoint from the store.
    fit(tmp_path, store, "solo", 2, monitor=None, top_k=1, plugin_only=True)
    assert store.get_policy("solo") is None
    assert [c.name for c in store.list("solo")] == ["solo/step-8"]


def test_unknown_references_fail_in_one_line_with_a_hint(tmp_path, store):
    assert StoreCheckpointIO(store, "known").resume_ref() is None  # a fresh run: ckpt_path=None
    fit(tmp_path, store, "known", 1)
    assert StoreCheckpointIO(store, "known").resume_ref() == "known:latest"
    with pytest.raises(CheckpointNotFound) as err:
        fit(tmp_path, store, "known", 2, ckpt_path="known:lates")
    assert str(err.value).startswith("Unknown reference 'known:lates'. Did you mean 'known:latest'")
    assert "ckpt ls" in err.value.hint
    io = StoreCheckpointIO(store, "known")
    missing = str(tmp_path / "nowhere" / "epoch=3-step=9.ckpt")
    with pytest.raises(CheckpointNotFound) as err:
        io.load_checkpoint(missing)
    assert "\n" not in str(err.value) and "'known:latest'" in str(err.value) and "ckpt ls known" in err.value.hint


class Canary:
    """A hyper-parameter object whose unpickling would leave a file behind."""

    def __init__(self, path):
        self.path = path

    def __setstate__(self, state):
        open(state["path"], "w").close()


def lightning_dict(hparams):
    return {"epoch": 0, "global_step": 3, "pytorch-lightning_version": pl.__version__,
            "state_dict": {"w": torch.arange(4.0)}, "hyper_parameters": hparams,
            "loops": {"fit_loop": {"n": 3, "ids": (1, 2), "by_id": {0: 1.5}}},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(4)}},
                                  "param_groups": [{"lr": 0.1, "params": [0]}]}]}


def test_plain_values_need_no_pickle_and_objects_load_only_as_weights_only_allows(tmp_path, store):
    io = StoreCheckpointIO(store, "raw", policy=None)
    io.save_checkpoint(lightning_dict({"lr": 0.1, "layers": [1, 2]}), tmp_path / "a.ckpt")
    back = io.load_checkpoint("raw/step-3")
    assert back["loops"] == {"fit_loop": {"n": 3, "ids": (1, 2), "by_id": {0: 1.5}}}
    assert back["hyper_parameters"] == {"lr": 0.1, "layers": [1, 2]}
    assert torch.equal(back["optimizer_states"][0]["state"][0]["exp_avg"], torch.ones(4))
    assert list(back) == list(lightning_dict({}))
    assert OBJECTS_FILE not in {f.path for f in store.manifest("raw/step-3").files}
    assert io.load_checkpoint(tmp_path / "a.ckpt")["global_step"] == 3  # the path Lightning saved to
    # ... in another process too (ckpt_path="best" gives Lightning's best_model_path)
    assert StoreCheckpointIO(store, "raw", policy=None).load_checkpoint(str(tmp_path / "a.ckpt"))["global_step"] == 3

    canary = tmp_path / "canary"
    io.save_checkpoint({**lightning_dict({"cfg": Canary(str(canary))}), "global_step": 4}, tmp_path / "b.ckpt")
    assert OBJECTS_FILE in {f.path for f in store.manifest("raw/step-4").files}
    with pytest.raises(UnsafePickle) as err:
        io.load_checkpoint("raw:latest", weights_only=False)  # asked for a full unpickle: still refused
    assert "add_safe_globals" in err.value.hint and "\n" not in str(err.value)
    assert not canary.exists()
    torch.serialization.add_safe_globals([Canary])
    try:
        back = io.load_checkpoint("raw:latest")
    finally:
        torch.serialization.clear_safe_globals()
    assert isinstance(back["hyper_parameters"]["cfg"], Canary)


def test_a_real_ckpt_file_from_before_the_store_resumes_and_later_saves_go_to_the_store(tmp_path, store):
    t = trainer(tmp_path / "old", 1, callbacks=[ModelCheckpoint(dirpath=tmp_path / "old", save_top_k=-1)])
    t.fit(TinyBertModule(), *loaders())
    old = next((tmp_path / "old").glob("*.ckpt"))
    resumed, t, _ = fit(tmp_path / "new", store, "moved", 2, ckpt_path=str(old))
    assert t.global_step == 8 and [c.step for c in store.log("moved")] == [8]
    assert os.path.exists(old)


def test_tied_weights_and_weights_outside_the_transformers_model_round_trip(store, tmp_path):
    from ckptstore.integrations._lightning_files import MORE_WEIGHTS_FILE, checkpoint_files, read_checkpoint

    class WithHead(pl.LightningModule):
        def __init__(self):
            super().__init__()
            config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=24, max_position_embeddings=16)
            self.model = transformers.BertForMaskedLM(config)  # decoder weight tied to the word embeddings
            self.head = torch.nn.Linear(16, 3)

    module = WithHead()
    state_dict = module.state_dict()
    checkpoint = {"epoch": 0, "global_step": 1, "pytorch-lightning_version": pl.__version__, "state_dict": state_dict}
    info = store.save(None, "tied/step-1", extra_files=checkpoint_files(checkpoint, module.model))
    assert set(store.load_tensors(info.id, MORE_WEIGHTS_FILE)) == {"head.weight", "head.bias"}
    back = read_checkpoint(store, info.id, run="tied")
    assert list(back["state_dict"]) == list(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(back["state_dict"][key], value), key
    WithHead().load_state_dict(back["state_dict"])  # strict: every key, tied ones included

    loaded = transformers.BertForMaskedLM.from_pretrained(store.export(info.id, tmp_path / "export"))
    assert loaded.cls.predictions.decoder.weight.data_ptr() == loaded.bert.embeddings.word_embeddings.weight.data_ptr()
    for key, value in module.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
