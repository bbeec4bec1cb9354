"""statetree's `other`/`objects` hooks: values JSON cannot hold are handed to the caller and put back in place."""

from __future__ import annotations

import json
from fractions import Fraction

import torch

from ckptstore._training import statetree


def test_other_values_are_kept_apart_and_put_back_in_place():
    kept = {}

    def other(value, path):
        kept[path] = value
        return path

    state = {"cfg": Fraction(1, 3), "rows": [torch.ones(2), (Fraction(2, 3), 5)], "__object__": 1}
    skeleton, tensors = statetree.flatten(state, "s", other=other)
    assert kept == {"s/cfg": Fraction(1, 3), "s/rows/1/0": Fraction(2, 3)}
    back = statetree.unflatten(json.loads(statetree.dumps(skeleton)), tensors, objects=kept)
    assert back["cfg"] == Fraction(1, 3) and back["rows"][1] == (Fraction(2, 3), 5) and back["__object__"] == 1
    assert torch.equal(back["rows"][0], torch.ones(2))


def test_a_skeleton_read_without_objects_keeps_such_a_dict_as_it_is():
    # Written before the marker existed (or by a caller that keeps no objects): a plain dict, not a marker.
    assert statetree.unflatten({"a": {"__object__": "x"}}, {}) == {"a": {"__object__": "x"}}
