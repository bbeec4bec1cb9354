"""One process of a multi-process accelerate job (tests/test_accelerate.py starts WORLD_SIZE of them on CPU/gloo).

argv: STORE STAGE RUN EPOCHS [resume] -- trains a small model with dropout for EPOCHS epochs of 4 steps, saving
into the store after each; with `resume`, loads RUN:latest first. The main process writes the final weights to
STAGE/final-RUN.pt."""

import sys
from pathlib import Path

import accelerate
import torch
from accelerate.utils import DataLoaderConfiguration

from ckptstore import Store
from ckptstore.integrations.accelerate import AcceleratorCheckpoints

store_dir, stage, run, epochs = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
resume = sys.argv[5:] == ["resume"]
# A seedable sampler, whose state save_state keeps: the default one reseeds its shuffle on every start.
acc = accelerate.Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
assert acc.num_processes > 1, acc.distributed_type
torch.manual_seed(0)  # the seedable sampler takes its seed from here: the same in every run
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
g = torch.Generator().manual_seed(1)
data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)  # 8 batches: 4 steps per process
model, opt, loader = acc.prepare(model, opt, loader)
checkpoints = AcceleratorCheckpoints(acc, Store.open(store_dir), run, staging_dir=stage)
torch.manual_seed(1234 + acc.process_index)
step = 0
if resume:
    with torch.no_grad():  # different weights: only the load can make them right again
        for p in model.parameters():
            p.add_(1.0)
    step = checkpoints.load_state().step
for epoch in range(step // 4, epochs):
    loader.set_epoch(epoch)  # accelerate keeps no epoch count of a map-style loader: the loop says where it is
    for x, y in loader:
        acc.backward(torch.nn.functional.mse_loss(model(x), y))
        opt.step()
        opt.zero_grad()
        step += 1
    checkpoints.save_state(step)
if acc.is_main_process:
    torch.save(dict(acc.unwrap_model(model).state_dict()), stage / f"final-{run}.pt")
