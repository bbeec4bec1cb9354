"""The store page's "saved by compression and deltas" figure: /api/store/packing on a real store before and after
`pack`, equal to what `ckpt du` reports."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_bert

pytest.importorskip("starlette")
pytest.importorskip("httpx")


def test_packing_savings_are_zero_before_pack_and_what_du_reports_after(store):
    from starlette.testclient import TestClient

    from ckptstore.ui import create_app

    model = make_tiny_bert(seed=0)
    for step in (1, 2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3 * torch.randn_like(p))  # every weight changes a little, as in a fine-tune
        store.save(model, f"run/step-{step}")
    client = TestClient(create_app(store))

    before = client.get("/api/store/packing").json()
    assert before["saved_bytes"] == 0 and before["stored_bytes"] == before["unique_bytes"]

    report = store.pack("run", keep_raw=False)
    after = client.get("/api/store/packing").json()
    total = store.storage_usage()["total"]
    assert report.blobs_encoded > 0
    assert after["saved_bytes"] == total["zstd_saved_bytes"] + total["delta_saved_bytes"] > 0
    assert after["stored_bytes"] == total["stored_bytes"] < before["stored_bytes"]
    page = client.get("/store").text
    assert 'id="packing-saved"' in page and "saved by compression and deltas" in page
