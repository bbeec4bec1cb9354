"""`config.env_seconds`, the one reader of the durations a store takes from the environment (the remote lease, gc
grace, and the journal's windows): unset or not a number gives the default, a value below the floor the floor."""

from __future__ import annotations

import pytest

from ckptstore.config import env_seconds


@pytest.mark.parametrize(("raw", "expected"), [
    (None, 60.0), ("", 60.0), ("soon", 60.0), ("2.5", 2.5), ("0", 1.0), ("-30", 1.0), ("1e3", 1000.0),
])
def test_env_seconds(monkeypatch, raw, expected):
    if raw is None:
        monkeypatch.delenv("CKPT_TEST_SECONDS", raising=False)
    else:
        monkeypatch.setenv("CKPT_TEST_SECONDS", raw)
    assert env_seconds("CKPT_TEST_SECONDS", 60.0, minimum=1.0) == expected


def test_the_floor_is_zero_unless_given(monkeypatch):
    monkeypatch.setenv("CKPT_TEST_SECONDS", "-1")
    assert env_seconds("CKPT_TEST_SECONDS", 600.0) == 0.0
