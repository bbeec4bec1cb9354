"""The store the web view's tests look at: a real fine-tune-like run of a tiny BERT classifier (only the classifier
head trains, so a diff names one layer), a pruned checkpoint, a user tag, and a run whose message, metadata and
metric name carry script canaries."""

from __future__ import annotations

import shutil
from pathlib import Path

# Each would run (set window.__pwned) if it reached the page as markup or code; shown as text it does nothing. The
# third closes the JSON script block the pages embed their data in, the fourth is a template injection probe.
CANARIES = (
    "<script>window.__pwned = 1</script>",
    "<img src=x onerror=\"window.__pwned = 2\">",
    "</script><script>window.__pwned = 3</script>",
    "{{ 7 * 7 }}'\"><svg onload=\"window.__pwned = 4\">",
)
CANARY_MESSAGE = CANARIES[0] + " " + CANARIES[2]
CANARY_METADATA = {"note": CANARIES[1], CANARIES[3]: "key canary", "nested": {"x": CANARIES[2]}}
CANARY_METRIC = "<b onmouseover=\"window.__pwned = 5\">acc</b>"

RUN_STEPS = (100, 200, 300, 400, 500)
RUN_LOSSES = (0.9, 0.5, 0.62, 0.55, 0.58)  # best: step 200


def build_ui_store(path: Path) -> dict:
    """Build the store at `path`; returns what the tests check against."""
    import torch
    import transformers

    from ckptstore import Store
    from ckptstore.policies import RetentionPolicy

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=64, num_labels=2)
    model = transformers.BertForSequenceClassification(config).eval()
    store = Store.init(path)
    names = []
    for step, loss in zip(RUN_STEPS, RUN_LOSSES):
        with torch.no_grad():
            model.classifier.weight.mul_(1.1)  # a stand-in for training the head alone
        info = store.save(model, f"sst2/step-{step}", metrics={"eval_loss": loss, "eval_accuracy": 1 - loss / 2},
                          message=f"step {step}")
        names.append(info.name)
    store.tag("sst2/step-300", "v1")
    # keep the last 2 (500, 600); best (200) and the tagged 300 stay too: 100 and 400 are pruned.
    store.set_policy("sst2", RetentionPolicy(keep_last=2))
    with torch.no_grad():
        model.classifier.weight.mul_(1.1)
    names.append(store.save(model, "sst2/step-600", metrics={"eval_loss": 0.57, "eval_accuracy": 0.7}).name)
    assert not store.has("sst2/step-100") and not store.has("sst2/step-400")
    store.save(model, "canary/step-1", metrics={"eval_loss": 0.3, CANARY_METRIC: 0.5}, message=CANARY_MESSAGE,
               metadata=CANARY_METADATA)
    store.save(model, "other/step-7", metrics={"eval_loss": 0.57})  # the same weights: stored once
    store.close()
    return {"kept": ["sst2/step-200", "sst2/step-300", "sst2/step-500", "sst2/step-600"],
            "pruned": ["sst2/step-100", "sst2/step-400"], "best": "sst2/step-200", "latest": "sst2/step-600"}


def copy_store(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest
