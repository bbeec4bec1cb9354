"""One rank of a real multi-process torch.distributed.checkpoint job (gloo on CPU), for tests/test_dcp*.py.

Run as ``python dcp_worker.py JOB.json`` with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, as torchrun
would. A tiny BERT is sharded with FSDP2 ``fully_shard`` over a CPU device mesh, trained with AdamW, and saved or
loaded through ckptstore's StoreWriter / StoreReader. Rank 0 writes what the test compares (full state dicts
gathered from the shards, logits, save reports) under the job's ``out`` folder.

Jobs (``action``):
- ``train``: one step, save ``name1``; freeze the embeddings and the first layer, one more step, save ``name2``.
- ``load``: a model of another seed, load each of ``refs`` into it (and its optimizer), dump the full state; with
  ``async_name``, then ``dcp.async_save`` what was loaded under that name.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from ckptstore import Store
from ckptstore.integrations.dcp import StoreReader, StoreWriter

CONFIG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
              max_position_embeddings=64, num_labels=3)
INPUT_IDS = torch.tensor([[5, 17, 42, 8, 99 - 1, 3], [7, 7, 1, 2, 60, 11]])


def build(seed: int, world_size: int):
    import transformers

    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**CONFIG))
    model.config.hidden_dropout_prob = 0.0
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    mesh = init_device_mesh("cpu", (world_size,))
    fully_shard(model.bert.embeddings, mesh=mesh)
    for layer in model.bert.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt


def step(model, opt, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (2,), generator=gen)
    out = model(input_ids=INPUT_IDS, labels=labels)
    out.loss.backward()
    opt.step()
    opt.zero_grad()


def full_state(model, opt) -> dict[str, torch.Tensor]:
    """Every tensor of model and optimizer, gathered in full (on rank 0), flattened to names."""
    msd, osd = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    out = {f"model.{k}": v.clone() for k, v in msd.items()}
    for fqn, state in osd.get("state", {}).items():
        for k, v in state.items():
            out[f"optim.{fqn}.{k}"] = torch.as_tensor(v).clone()
    return out


def dump(path: Path, tensors: dict[str, torch.Tensor], extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    if extra is not None:
        path.with_suffix(".json").write_text(json.dumps(extra))


def logits(model_state: dict[str, torch.Tensor]) -> torch.Tensor:
    import transformers

    plain = transformers.BertForSequenceClassification(transformers.BertConfig(**CONFIG)).eval()
    plain.load_state_dict({k.removeprefix("model."): v for k, v in model_state.items() if k.startswith("model.")})
    with torch.no_grad():
        return plain(input_ids=INPUT_IDS).logits


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=job.get("timeout", 60)))
    out = Path(job["out"])
    store = Store.open(job["store"])
    try:
        if job["action"] == "train":
            train(job, store, rank, world, out)
        else:
            load(job, store, rank, world, out)
    finally:
        store.close()
        dist.destroy_process_group()


def train(job, store, rank, world, out) -> None:
    from transformers import AutoTokenizer

    model, opt = build(0, world)
    step(model, opt, 1)
    tokenizer = AutoTokenizer.from_pretrained(job["tokenizer"]) if job.get("tokenizer") else None
    for n, name in enumerate((job["name1"], job.get("name2"))):
        if name is None:
            break
        if n == 1:  # half the model frozen: its weights and optimizer state stay as they were
            for module in (model.bert.embeddings, model.bert.encoder.layer[0]):
                for p in module.parameters():
                    p.requires_grad_(False)
            step(model, opt, 2)
        msd, osd = get_state_dict(model, opt)
        writer = StoreWriter(store, name, model_config=model, tokenizer=tokenizer,
                             metrics={"loss": 0.5 - n / 10})
        dcp.save({"model": msd, "optim": osd}, storage_writer=writer)
        full = full_state(model, opt)
        # what this rank itself sent to a remote store (every rank uploads its own blobs)
        (out / f"requests-{name.replace('/', '~')}-{rank}.json").write_text(json.dumps(store.requests))
        if rank == 0:
            report = {"new_bytes": writer.report.new_bytes, "id": writer.report.id}
            dump(out / f"{name.replace('/', '~')}.safetensors", full, report)
            torch.save(logits(full), out / f"{name.replace('/', '~')}.logits.pt")
        dist.barrier()


def load(job, store, rank, world, out) -> None:
    model, opt = build(123, world)
    for ref in job["refs"]:
        msd, osd = get_state_dict(model, opt)
        state = {"model": msd, "optim": osd}
        dcp.load(state, storage_reader=StoreReader(store, ref))
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        full = full_state(model, opt)
        if rank == 0:
            lr = opt.param_groups[0]["lr"]
            dump(out / f"loaded-{world}-{ref.replace('/', '~').replace(':', '@')}.safetensors", full, {"lr": lr})
    if job.get("async_name"):
        msd, osd = get_state_dict(model, opt)
        writer = StoreWriter(store, job["async_name"])
        future = dcp.async_save({"model": msd, "optim": osd}, storage_writer=writer)
        future.result()
        if rank == 0:
            (out / "async.json").write_text(json.dumps({"new_bytes": writer.report.new_bytes}))
    dist.barrier()


if __name__ == "__main__":
    main()
