"""bench_remote: a store in object storage (s3:// on a local moto_server) against boto3 on the same server.

- push: `store.save` of BERT-base (110M parameters, random init) into an empty remote store vs boto3's managed
  `upload_file` of each file of the `save_pretrained` folder, at the same concurrency (CKPT_REMOTE_CONCURRENCY and
  TransferConfig.max_concurrency);
- cold load: `store.load` with an empty blob cache (fetch, hash-check, cache, map) vs boto3 `download_file` of the
  folder then `from_pretrained`;
- warm load: `store.load` again (no network) vs `from_pretrained` of a local folder;
- re-push after a fine-tune with frozen embeddings: the bytes uploaded vs the bytes of the tensors that changed;
- requests per operation: `ls` with nothing new (a fresh process's view, its index cached), a save of an unchanged
  model, a tag move.

Each time is the median of N runs, the two sides alternating who goes first. Run:
    python bench/bench_remote.py            # BERT-base, 3 runs
    python bench/bench_remote.py --quick    # a 6-layer, 384-wide BERT, 2 runs (a minute or two)
    python bench/bench_remote.py --requests-only  # one push, then the request counts alone
                                                  # (bench/results/bench_remote_requests.*; no timing)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

CONCURRENCY = 8


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_arguments(ap, repeat=3)
    ap.add_argument("--quick", action="store_true", help="a small BERT (6 layers, 384 wide) and 2 runs")
    ap.add_argument("--requests-only", action="store_true",
                    help="no timing: one push, then the requests per operation (bench_remote_requests results)")
    args = ap.parse_args()
    if args.quick and args.repeat == 3:
        args.repeat = 2
    tmp = Path(args.tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-remote-", dir=tmp))
    proc, endpoint = start_moto()
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_REGION="us-east-1", CKPT_REMOTE_CONCURRENCY=str(CONCURRENCY),
                      XDG_CACHE_HOME=str(work / "xdg"), HF_HUB_OFFLINE="1")
    try:
        run(args, work, endpoint)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path, endpoint: str) -> None:
    import boto3
    import torch
    import transformers
    from boto3.s3.transfer import TransferConfig

    from ckptstore import Store

    transformers.logging.set_verbosity_error()
    _common.use_quiet(args.quiet_timeout, work)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    bucket = "bench-remote"
    s3.create_bucket(Bucket=bucket)
    transfer = TransferConfig(max_concurrency=CONCURRENCY, multipart_threshold=32 << 20, multipart_chunksize=8 << 20)

    torch.manual_seed(0)
    config = (transformers.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                                      intermediate_size=1536) if args.quick else transformers.BertConfig())
    model = transformers.BertModel(config).eval()
    folder = work / "model"
    model.save_pretrained(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    size = sum(p.stat().st_size for p in files)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.0f}M parameters, {size / 1e6:.0f} MB folder; moto_server at {endpoint}")

    def drop(prefix: str) -> None:
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})

    def boto_push(prefix: str) -> None:
        for p in files:
            s3.upload_file(str(p), bucket, f"{prefix}/{p.name}", Config=transfer)

    def boto_pull_and_load(prefix: str, dest: Path):
        dest.mkdir(parents=True)
        for p in files:
            s3.download_file(bucket, f"{prefix}/{p.name}", str(dest / p.name), Config=transfer)
        return transformers.BertModel.from_pretrained(dest)

    times: dict[str, list[float]] = {k: [] for k in ("push_ours", "push_boto3", "cold_ours", "cold_boto3",
                                                     "warm_ours", "warm_local")}
    if args.requests_only:
        args.repeat = 1
        Store.init(f"s3://{bucket}/store-0").save(folder, "bert/step-1")
    for i in range(0 if args.requests_only else args.repeat):
        url = f"s3://{bucket}/store-{i}"
        ours_cache = work / f"cache-{i}"
        # -- push ------------------------------------------------------------------------------------------------
        for side in _common.in_turn(["ours", "boto3"], i):
            if side == "ours":
                store = Store.init(url)
                t, _ = _common.timed(lambda: store.save(folder, "bert/step-1"))
            else:
                t, _ = _common.timed(lambda: boto_push(f"plain-{i}"))
            times[f"push_{side}"].append(t)
        # -- cold load -------------------------------------------------------------------------------------------
        for side in _common.in_turn(["ours", "boto3"], i):
            if side == "ours":
                os.environ["CKPT_CACHE_DIR"] = str(ours_cache)
                t, _ = _common.timed(lambda: Store.open(url).load("bert/step-1", cls=transformers.BertModel))
            else:
                t, _ = _common.timed(lambda: boto_pull_and_load(f"plain-{i}", work / f"download-{i}"))
            times[f"cold_{side}"].append(t)
        # -- warm load -------------------------------------------------------------------------------------------
        # Five alternating pairs a round: a warm load takes tens of milliseconds, where one sample is mostly noise.
        reader = Store.open(url)
        reader.list()
        warm: dict[str, list[float]] = {"ours": [], "local": []}
        for k in range(5):
            for side in _common.in_turn(["ours", "local"], i + k):
                if side == "ours":
                    before = reader.requests
                    t, _ = _common.timed(lambda: reader.load("bert/step-1", cls=transformers.BertModel))
                    assert reader.requests == before, "a warm load sent requests"
                else:
                    t, _ = _common.timed(lambda: transformers.BertModel.from_pretrained(folder))
                warm[side].append(t)
        for side, ts in warm.items():
            times[f"warm_{side}"].append(statistics.median(ts))
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
        if i < args.repeat - 1:
            drop(f"store-{i}/")
            drop(f"plain-{i}/")
            shutil.rmtree(work / f"download-{i}", ignore_errors=True)
            shutil.rmtree(ours_cache, ignore_errors=True)

    # -- re-push after a fine-tune with frozen embeddings, and requests per operation -----------------------------
    url = f"s3://{bucket}/store-{args.repeat - 1}"
    store = Store.open(url)
    changed = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("embeddings."):
                p.add_(torch.randn_like(p) * 1e-3)
                changed += p.numel() * p.element_size()
    before = store.requests
    report = store.save(model, "bert/step-2")
    repush_requests = _delta(before, store.requests)
    fresh = Store.open(url)
    fresh.list()  # this machine's index is now up to date
    ls_store = Store.open(url)
    ls_store.list()
    ls_requests = ls_store.requests
    before = store.requests
    store.save(model, "bert/step-3")
    unchanged_requests = _delta(before, store.requests)
    before = store.requests
    store.tag("bert/step-2", "prod")
    tag_requests = _delta(before, store.requests)
    before = store.requests
    store.tag("bert/step-3", "prod")
    tag_move_requests = _delta(before, store.requests)

    if args.requests_only:
        results = {"model_params": params, "folder_bytes": size, "concurrency": CONCURRENCY,
                   "repush": {"uploaded_bytes": report.new_bytes, "changed_tensor_bytes": changed,
                              "requests": repush_requests},
                   "requests": {"ls_nothing_new": ls_requests, "save_unchanged": unchanged_requests,
                                "tag_set": tag_requests, "tag_move": tag_move_requests}}
        rows = [["ls with nothing new", _fmt(ls_requests)],
                ["save of an unchanged model", _fmt(unchanged_requests)],
                ["save after a fine-tune with frozen embeddings", _fmt(repush_requests)],
                ["tag set / tag move", f"{_fmt(tag_requests)} / {_fmt(tag_move_requests)}"]]
        _common.write_results("bench_remote_requests" + ("_quick" if args.quick else ""), tmp=work, args=args,
                              results=results, table=(["operation", "requests"], rows),
                              title=f"bench_remote --requests-only: {params / 1e6:.0f}M-parameter BERT on a local"
                                    " moto_server, requests per operation")
        return
    med = {k: statistics.median(v) for k, v in times.items()}
    results = {
        "model_params": params, "folder_bytes": size, "concurrency": CONCURRENCY,
        "medians_s": {k: round(v, 3) for k, v in med.items()}, "runs_s": times,
        "ratios": {"push": round(med["push_ours"] / med["push_boto3"], 3),
                   "cold_load": round(med["cold_ours"] / med["cold_boto3"], 3),
                   "warm_load": round(med["warm_ours"] / med["warm_local"], 3)},
        "repush": {"uploaded_bytes": report.new_bytes, "changed_tensor_bytes": changed,
                   "requests": repush_requests},
        "requests": {"ls_nothing_new": ls_requests, "save_unchanged": unchanged_requests, "tag_set": tag_requests,
                     "tag_move": tag_move_requests},
    }
    r = results["ratios"]
    rows = [
        ["push into an empty store", f"{med['push_ours']:.2f} s", f"boto3 upload_file {med['push_boto3']:.2f} s",
         f"{r['push']:.2f}x"],
        ["load, cold cache", f"{med['cold_ours']:.2f} s",
         f"boto3 download_file + from_pretrained {med['cold_boto3']:.2f} s", f"{r['cold_load']:.2f}x"],
        ["load, warm cache", f"{med['warm_ours']:.2f} s", f"from_pretrained of a local folder {med['warm_local']:.2f} s",
         f"{r['warm_load']:.2f}x"],
        ["re-push, frozen embeddings", f"{report.new_bytes / 1e6:.1f} MB uploaded",
         f"changed tensors {changed / 1e6:.1f} MB", f"{report.new_bytes / changed:.3f}x"],
        ["requests: ls with nothing new", _fmt(ls_requests), "", ""],
        ["requests: save of an unchanged model", _fmt(unchanged_requests), "", ""],
        ["requests: tag set / tag move", f"{_fmt(tag_requests)} / {_fmt(tag_move_requests)}", "", ""],
    ]
    title = (f"bench_remote: {params / 1e6:.0f}M-parameter BERT on a local moto_server, concurrency {CONCURRENCY},"
             f" median of {args.repeat}")
    _common.write_results("bench_remote" + ("_quick" if args.quick else ""), tmp=work, args=args, results=results,
                          table=(["operation", "ckptstore", "baseline", "ratio"], rows), title=title,
                          extra={"quiet": _common.QUIET.summary()})


def _delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))
            if after.get(k, 0) != before.get(k, 0)}


def _fmt(counts: dict) -> str:
    total = sum(counts.values())
    return f"{total} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})"


if __name__ == "__main__":
    main()
