"""A tiny labelled dataset of random token ids for real `transformers.Trainer` runs in tests (a tiny BERT with
two labels learns from it in a few steps); the same `seed` gives the same examples in every process."""

from __future__ import annotations

import torch


class TinyDataset(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 99, (n, 12), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}
