"""`ckpt ui` in a real headless Chromium shows what `ckpt validate` and `ckpt verify` recorded."""

from __future__ import annotations

from ckptstore import Store


def test_checkpoint_page_shows_the_recorded_validation(page, ui_server, tmp_path, tiny_bert, screenshots):
    path = tmp_path / "store"
    with Store.init(path) as store:
        store.save(tiny_bert(), "run/step-1")
        assert store.validate("run/step-1").ok
        assert store.verify().ok
    server = ui_server(path)
    page.goto(server.url + "/c/run/step-1")
    validation = page.locator("#validation")
    assert validation.locator("b.result.ok").inner_text() == "passed"
    assert "loads, finite, forward" in validation.inner_text() and "just now" in validation.inner_text()
    page.screenshot(path=str(screenshots / "checkpoint-validated.png"), full_page=True)
    page.goto(server.url + "/store")
    assert page.locator("#last-verify b.result").inner_text() == "passed"
    assert "1 checkpoint," in page.locator("#last-verify").inner_text()
    assert page.errors == []
