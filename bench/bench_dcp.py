"""torch.distributed.checkpoint into the store against DCP's own FileSystemWriter, both durable.

    .venv/bin/python bench/bench_dcp.py [--quick] [--repeat N] [--tmp-dir DIR]

Two ranks (real processes, gloo on CPU) train BERT-base (BertModel, ~110M parameters; --quick: a 4-layer, 256-wide
one) sharded with FSDP2 ``fully_shard``, with AdamW state (~1.3 GB in all). Each round takes a training step (so
every weight and moment changes and both targets write everything anew), then, in alternating order:
  store    dcp.save(..., storage_writer=StoreWriter(store, "bench/step-N"))   blobs fsynced (syncfs), one commit
  folder   dcp.save(..., storage_writer=FileSystemWriter(DIR))                  sync_files=True: every file fsynced
timed on rank 0 from a barrier before to a barrier after. Then one process (world size 1) loads the last round's
checkpoint from each into an unsharded model and AdamW (dcp.load reshards), in alternating order, page cache warm
for both. Last, the embeddings are frozen, the ranks take one more step and save again: the bytes each target
writes. Medians of N rounds; results in bench/results/bench_dcp.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common  # noqa: E402


def build(quick: bool, world: int | None):
    import torch
    import transformers

    torch.manual_seed(0)
    kw = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024) if quick else {}
    model = transformers.BertModel(transformers.BertConfig(**kw)).train()
    if world is not None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model.encoder.layer:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-5)


def train_step(model, opt, seed: int) -> None:
    import torch

    ids = torch.randint(1000, 20000, (2, 16), generator=torch.Generator().manual_seed(seed))
    out = model(input_ids=ids)
    (out.last_hidden_state.pow(2).mean() + out.pooler_output.mean()).backward()
    opt.step()
    opt.zero_grad()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def save_ranks(job: dict) -> None:
    """One of the two saving ranks (RANK, WORLD_SIZE, MASTER_* set by the parent)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from ckptstore import Store
    from ckptstore.integrations.dcp import StoreWriter

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if rank == 0:
        _common.use_quiet(job["quiet_timeout"], Path(job["tmp"]))
    store = Store.open(job["store"])
    model, opt = build(job["quick"], world)
    tmp = Path(job["tmp"])
    times: dict[str, list[float]] = {"store": [], "folder": []}
    written: dict[str, int] = {}

    def timed_save(target: str, r: int, *, record: bool = True) -> None:
        msd, osd = get_state_dict(model, opt)
        state = {"model": msd, "optim": osd}
        writer = (StoreWriter(store, f"bench/step-{r}") if target == "store"
                  else dcp.FileSystemWriter(str(tmp / f"folder-{r}"), sync_files=True))
        if rank == 0:
            _common.QUIET.wait()
        dist.barrier()
        t0 = time.perf_counter()
        dcp.save(state, storage_writer=writer)
        dist.barrier()
        if rank == 0:
            if record:
                times[target].append(time.perf_counter() - t0)
            written[target] = writer.report.new_bytes if target == "store" else folder_bytes(tmp / f"folder-{r}")

    train_step(model, opt, 0)
    for r in range(job["repeat"]):
        train_step(model, opt, r + 1)
        for target in _common.in_turn(["store", "folder"], r):
            timed_save(target, r)
        if rank == 0:
            print(f"round {r}: store {times['store'][-1]:.2f} s, folder {times['folder'][-1]:.2f} s", flush=True)
            if r + 1 < job["repeat"]:  # keep the disk from filling: only the last round is loaded
                store.delete([f"bench/step-{r}"])
                store.gc()
                shutil.rmtree(tmp / f"folder-{r}")
                os.sync()
        dist.barrier()
    first = dict(written)
    for p in model.embeddings.parameters():
        p.requires_grad_(False)
    train_step(model, opt, 10_000)
    last = job["repeat"] - 1
    for target in ("store", "folder"):
        timed_save(target, last + 1, record=False)  # bytes only: the timed rounds write everything anew
    if rank == 0:
        out = {"save_s": times, "first_save_bytes": first, "frozen_save_bytes": dict(written),
               "parameters": sum(p.numel() for p in build(job["quick"], None)[0].parameters())}
        Path(job["result"]).write_text(json.dumps(out))
    store.close()
    dist.destroy_process_group()


def load_one(job: dict) -> None:
    """World size 1: load the last round's checkpoint from the store and from the folder, alternating."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from ckptstore import Store
    from ckptstore.integrations.dcp import StoreReader

    _common.use_quiet(job["quiet_timeout"], Path(job["tmp"]))
    store = Store.open(job["store"])
    model, opt = build(job["quick"], None)
    train_step(model, opt, 0)  # AdamW's moments exist, so that dcp.load has tensors to fill
    last = job["repeat"] - 1
    times: dict[str, list[float]] = {"store": [], "folder": []}
    states = {}
    for r in range(job["repeat"]):
        for target in _common.in_turn(["store", "folder"], r):
            msd, osd = get_state_dict(model, opt)
            state = {"model": msd, "optim": osd}
            reader = (StoreReader(store, f"bench/step-{last}") if target == "store"
                      else dcp.FileSystemReader(str(Path(job["tmp"]) / f"folder-{last}")))
            seconds, _ = _common.timed(lambda: dcp.load(state, storage_reader=reader, no_dist=True))
            times[target].append(seconds)
            states[target] = {k: v.clone() for k, v in state["model"].items()}
    same = all(torch.equal(states["store"][k], states["folder"][k]) for k in states["store"])
    Path(job["result"]).write_text(json.dumps({"load_s": times, "same_tensors": same}))
    store.close()


def spawn(world: int, fn: str, job: dict) -> None:
    job_file = Path(job["tmp"]) / f"job-{fn}.json"
    job_file.write_text(json.dumps(job))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_dcp as b, json; b.{fn}(json.load(open(sys.argv[1])))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(job_file)],
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": str(world),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for r in range(world)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"{fn} failed: exit codes {codes}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_arguments(ap, repeat=3)
    ap.add_argument("--quick", action="store_true", help="a small model (~11M parameters), one round")
    args = ap.parse_args()
    if args.quick and args.repeat == 3:
        args.repeat = 1
    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=args.tmp_dir))
    try:
        from ckptstore import Store

        Store.init(tmp / "store").close()
        job = {"store": str(tmp / "store"), "tmp": str(tmp), "quick": args.quick, "repeat": args.repeat,
               "quiet_timeout": args.quiet_timeout}
        spawn(2, "save_ranks", {**job, "result": str(tmp / "save.json")})
        spawn(1, "load_one", {**job, "result": str(tmp / "load.json")})
        saved = json.loads((tmp / "save.json").read_text())
        loaded = json.loads((tmp / "load.json").read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: {t: statistics.median(v) for t, v in saved["save_s"].items()} for k in ("save",)}["save"]
    lmed = {t: statistics.median(v) for t, v in loaded["load_s"].items()}
    frozen = saved["frozen_save_bytes"]
    results = {
        "parameters": saved["parameters"],
        "save_s": saved["save_s"], "save_median_s": med, "save_ratio_store_to_folder": med["store"] / med["folder"],
        "load_s": loaded["load_s"], "load_median_s": lmed, "load_ratio_store_to_folder": lmed["store"] / lmed["folder"],
        "load_same_tensors": loaded["same_tensors"],
        "first_save_bytes": saved["first_save_bytes"], "frozen_embeddings_save_bytes": frozen,
    }
    gb = 1e9
    rows = [
        ["dcp.save, 2 ranks, durable", f"{med['store']:.2f} s", f"{med['folder']:.2f} s",
         f"{med['store'] / med['folder']:.2f}x"],
        ["dcp.load at world size 1", f"{lmed['store']:.2f} s", f"{lmed['folder']:.2f} s",
         f"{lmed['store'] / lmed['folder']:.2f}x"],
        ["bytes written, first save", f"{saved['first_save_bytes']['store'] / gb:.2f} GB",
         f"{saved['first_save_bytes']['folder'] / gb:.2f} GB", ""],
        ["bytes written, save after a step with frozen embeddings", f"{frozen['store'] / gb:.3f} GB",
         f"{frozen['folder'] / gb:.3f} GB", f"{frozen['store'] / frozen['folder']:.2f}x"],
    ]
    print(json.dumps({k: v for k, v in results.items() if not k.endswith("_s")}, indent=1))
    _common.write_results(
        "bench_dcp", tmp=args.tmp_dir, args=args, results=results,
        table=(["", "store (StoreWriter/StoreReader)", "folder (FileSystemWriter/Reader)", "store / folder"], rows),
        title=f"torch.distributed.checkpoint: store vs folder, {saved['parameters'] / 1e6:.0f}M-parameter BERT +"
              f" AdamW, FSDP2 on 2 ranks (gloo, CPU); median of {args.repeat}",
        extra={"quiet": "rank 0 waits for a quiet machine before each timed op (--quiet-timeout)"},
    )


if __name__ == "__main__":
    main()
