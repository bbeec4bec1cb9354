"""Keep-within retention (restic's --keep-within and --keep-within-hourly/-daily/-weekly): pure plans on hand-made
checkpoints with fixed created_at values, duration parsing, the stored setting, and the CLI on a real store."""

from __future__ import annotations

import calendar
import json
import re
import types

import pytest

from ckptstore import Store
from ckptstore._core.info import CheckpointInfo
from ckptstore.errors import InvalidArgument, PolicyError
from ckptstore.policies import (
    KeepWithin,
    KeepWithinEvery,
    RetentionPolicy,
    parse_duration,
)

H, D = 3600, 86400
# 2026-03-02 00:00 UTC, a Monday: buckets below are easy to read off.
T0 = float(calendar.timegm((2026, 3, 2, 0, 0, 0)))


def ck(step: int, t: float, run: str = "r", tags: tuple[str, ...] = ()) -> CheckpointInfo:
    return CheckpointInfo(id=f"id-{step}", name=f"{run}/step-{step}", run=run, step=step, created_at=t, tags=tags,
                          logical_bytes=100)


def kept_steps(policy: RetentionPolicy, cps: list[CheckpointInfo]) -> list[int]:
    return [d.checkpoint.step for d in policy.plan(cps).keep]


@pytest.mark.parametrize(("text", "seconds"), [
    ("30m", 1800), ("2h", 7200), ("7d", 7 * D), ("1w", 7 * D), ("1d12h", 36 * H), (" 90s ", 90), ("2H", 7200),
])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["7", "d", "1y", "3mo", "7 d", "-1d", "1.5h", "", "0h", "0d0h"])
def test_parse_duration_refuses_what_is_not_a_positive_duration(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_duration(text)
    assert "30m, 2h, 7d, 1w" in info.value.hint


def test_keep_within_is_measured_from_the_newest_checkpoint_not_from_now() -> None:
    # Made months ago: measuring from the clock would keep none; restic measures from the latest snapshot.
    cps = [ck(1, T0), ck(2, T0 + 2 * D), ck(3, T0 + 9 * D), ck(4, T0 + 10 * D)]
    plan = RetentionPolicy(keep_within="7d").plan(cps)
    assert [d.checkpoint.step for d in plan.keep] == [3, 4]
    removed = {d.checkpoint.step: d.reason for d in plan.remove}
    assert removed == {1: "made more than 7 days before the newest", 2: "made more than 7 days before the newest"}
    assert "made within 7 days of the newest" in plan.keep[0].reasons


def test_keep_within_boundary_is_strict_as_in_restic() -> None:
    # restic keeps a snapshot when its time is after latest - duration: exactly 2h before the newest is out.
    cps = [ck(1, T0), ck(2, T0 + 1), ck(3, T0 + 2 * H)]
    assert kept_steps(RetentionPolicy(keep_within="2h"), cps) == [2, 3]


def test_keep_within_adds_to_the_other_rules_and_the_guarantees() -> None:
    cps = [ck(1, T0, tags=("v1",)), ck(2, T0 + D), ck(3, T0 + 20 * D), ck(4, T0 + 30 * D), ck(5, T0 + 30 * D + H)]
    assert kept_steps(RetentionPolicy(keep_last=1, keep_within="1d"), cps) == [1, 4, 5]
    assert kept_steps(RetentionPolicy(keep_every=2, keep_within="1h"), cps) == [1, 2, 4, 5]


def test_keep_within_hourly_keeps_the_newest_of_each_hour_inside_the_window() -> None:
    cps = [
        ck(1, T0 + 10 * 60),          # 00:10, hour 00 but outside the 3h window (newest at 03:20)
        ck(2, T0 + 30 * 60),          # 00:30, hour 00, inside (after 00:20)
        ck(3, T0 + H + 5 * 60),       # 01:05
        ck(4, T0 + H + 50 * 60),      # 01:50: newest of hour 01
        ck(5, T0 + 3 * H + 20 * 60),  # 03:20: the newest checkpoint
    ]
    plan = RetentionPolicy(keep_within_hourly="3h").plan(cps)
    assert [d.checkpoint.step for d in plan.keep] == [2, 4, 5]
    why = {d.checkpoint.step: d.reason for d in plan.keep}
    assert why[4] == "the newest of its hour (2026-03-02 01:00 UTC) within 3 hours of the newest"
    assert {d.checkpoint.step for d in plan.remove} == {1, 3}


def test_keep_within_daily_and_weekly_thin_by_calendar_buckets() -> None:
    cps = [ck(i, T0 + i * 6 * H) for i in range(1, 30)]  # every 6 hours for a week: 00:00 2 March + ...
    daily = RetentionPolicy(keep_within_daily="3d").plan(cps)
    kept = [d.checkpoint for d in daily.keep]
    newest = cps[-1].created_at
    assert all(c.created_at > newest - 3 * D for c in kept)
    days = [KeepWithinEvery("3d", "day").bucket(c) for c in kept]
    assert len(days) == len(set(days)) == 4  # the partial first day, two whole days, the newest's day
    # 2 March 2026 is a Monday: steps 1..27 fall in ISO week 10, 28 and 29 (Monday 9 March) in week 11.
    weekly = RetentionPolicy(keep_within_weekly="2w").plan(cps)
    assert [d.checkpoint.step for d in weekly.keep] == [27, 29]


def test_keep_within_and_thinning_combine_as_restic_does() -> None:
    # Everything from the last 2 hours, then one a day for the last 10 days.
    cps = [ck(i, T0 + i * 4 * H) for i in range(1, 60)]
    plan = RetentionPolicy(keep_within="2h", keep_within_daily="10d").plan(cps)
    kept = [d.checkpoint.step for d in plan.keep]
    assert kept[-1] == 59
    assert len(kept) == len({KeepWithinEvery("10d", "day").bucket(c) for c in cps
                             if c.created_at > cps[-1].created_at - 10 * D})


def test_policy_objects_read_in_plain_words() -> None:
    assert str(KeepWithin("7d")) == "every checkpoint made within 7 days of the newest"
    assert str(KeepWithin("90m")) == "every checkpoint made within 1 hour 30 minutes of the newest"
    assert str(KeepWithinEvery("2d", "hour")) == "the newest checkpoint of each hour within 2 days of the newest"
    text = str(RetentionPolicy(keep_last=2, keep_within="1w", keep_within_daily="30d"))
    assert text == ("keep the last 2, every checkpoint made within 7 days of the newest, the newest checkpoint of each"
                    " day within 30 days of the newest")


def test_keep_within_alone_is_a_valid_policy_and_a_bad_one_fails_at_construction() -> None:
    RetentionPolicy(keep_within="1h")
    with pytest.raises(InvalidArgument, match="keep_within '7 days' is not a duration"):
        RetentionPolicy(keep_within="7 days")
    with pytest.raises(InvalidArgument, match="keep_within_hourly"):
        RetentionPolicy(keep_within_hourly=3600)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="period must be"):
        KeepWithinEvery("1d", "month")  # type: ignore[arg-type]


def test_settings_round_trip_and_stay_readable_by_older_releases() -> None:
    p = RetentionPolicy(keep_last=2, keep_within="7d", keep_within_hourly="1d")
    data = p.to_json()
    assert data["keep_within"] == "7d" and data["keep_within_hourly"] == "1d"
    assert RetentionPolicy.from_json(json.loads(json.dumps(data))) == p
    # Unset, the new keys are not written: a release from before them refuses unknown keys.
    assert "keep_within" not in RetentionPolicy(keep_last=2).to_json()


# -- on a real store, through the CLI ---------------------------------------------------------------------------


def _save_at(monkeypatch, store: Store, step: int, when: float) -> None:
    """Save `step` as if made at `when`: save.py stamps created_at from its module's `time.time()`."""
    import ckptstore._ops.save as save_mod

    monkeypatch.setattr(save_mod, "time", types.SimpleNamespace(time=lambda: when))
    store.save(None, f"r/step-{step}", step=step, extra_files={"config.json": b'{"step": %d}' % step})
    monkeypatch.undo()


def test_cli_keep_within_policy_and_prune(ckpt, tmp_path, monkeypatch) -> None:
    with Store.init(tmp_path / "store") as store:
        for step, when in [(1, T0), (2, T0 + 3 * D), (3, T0 + 8 * D), (4, T0 + 9 * D)]:
            _save_at(monkeypatch, store, step, when)

    r = ckpt("policy", "r", "--keep-within", "2d", "--keep-within-daily", "5d")
    assert r.code == 0, r.err
    assert ("r: keep every checkpoint made within 2 days of the newest, the newest checkpoint of each day within"
            " 5 days of the newest") in r.out
    assert "removes 2: r/step-1, r/step-2" in r.err

    r = ckpt("policy", "r", "--json")
    assert json.loads(r.out)["policy"]["keep_within"] == "2d"

    r = ckpt("prune", "r", "--dry-run")
    assert r.code == 0, r.err
    lines = {re.search(r"r/step-\d+", line).group(0): line for line in r.out.splitlines() if "r/step-" in line}
    assert "made within 2 days of the newest" in lines["r/step-3"]
    assert "more than 2 days before the newest" in lines["r/step-1"]
    assert lines["r/step-1"].startswith("would delete")

    r = ckpt("prune", "r", "--keep-within", "10d")
    assert r.code == 0, r.err
    with Store.open(tmp_path / "store") as store:
        assert sorted(c.step for c in store.list("r")) == [1, 2, 3, 4]
    r = ckpt("prune", "r")
    with Store.open(tmp_path / "store") as store:
        assert sorted(c.step for c in store.list("r")) == [3, 4]


def test_cli_refuses_a_bad_duration_with_exit_2(ckpt, tmp_path) -> None:
    Store.init(tmp_path / "store").close()
    r = ckpt("policy", "r", "--keep-within", "7days")
    assert r.code == 2
    assert "--keep-within '7days' is not a duration" in r.err
    assert "30m, 2h, 7d" in r.err
    r = ckpt("prune", "r", "--keep-within-hourly", "1y")
    assert r.code == 2 and "--keep-within-hourly '1y'" in r.err
