"""The random number generators a training loop draws from (python, numpy, torch CPU and CUDA), captured as
tensors plus JSON and restored exactly.

Resuming into the same run means resuming the same random stream: dropout masks, shuffling and augmentation
all read these generators, and a resume that reseeds them trains a different model from the step it resumed at.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import InvalidCheckpoint

PREFIX = "rng"


def capture() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The state of every generator now, as (JSON-safe dict, tensors named ``rng/...``)."""
    version, words, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    info: dict[str, Any] = {
        "python": {"version": version, "gauss_next": gauss_next},
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "cuda_devices": 0,
    }
    tensors = {
        f"{PREFIX}/python": torch.tensor(words, dtype=torch.int64),
        # uint32 words widened to int64: every safetensors reader has I64, not every one has U32.
        f"{PREFIX}/numpy": torch.from_numpy(keys.astype(np.int64)),
        f"{PREFIX}/torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states = torch.cuda.get_rng_state_all()
        info["cuda_devices"] = len(states)
        for i, s in enumerate(states):
            tensors[f"{PREFIX}/cuda/{i}"] = s.cpu()
    return info, tensors


def restore(info: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """Put every generator back where :func:`capture` found it."""
    try:
        py, npy = info["python"], info["numpy"]
        words = tuple(int(w) for w in tensors[f"{PREFIX}/python"].tolist())
        keys = tensors[f"{PREFIX}/numpy"].numpy().astype(np.uint32)
        torch_state = tensors[f"{PREFIX}/torch"]
    except (KeyError, TypeError) as exc:
        raise InvalidCheckpoint(
            f"The stored random number generator state is incomplete (missing {exc}).",
            hint="Restore with restore_rng=False to load weights and optimizer without it.",
        ) from None
    random.setstate((py["version"], words, py["gauss_next"]))
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(torch_state.clone())
    cuda = int(info.get("cuda_devices", 0))
    if cuda and torch.cuda.is_available():
        # A resume on fewer devices restores those it has; the stream of a missing device cannot matter.
        for i in range(min(cuda, torch.cuda.device_count())):
            torch.cuda.set_rng_state(tensors[f"{PREFIX}/cuda/{i}"].clone(), device=i)
