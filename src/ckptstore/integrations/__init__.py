"""Training integrations. Each lives in its own module so that importing ckptstore never imports a framework:

- :mod:`ckptstore.integrations.transformers`: ``CheckpointCallback`` for ``transformers.Trainer``.
- :mod:`ckptstore.integrations.lightning`: ``StoreCheckpointIO``, PyTorch Lightning's checkpoint plugin.
- :mod:`ckptstore.integrations.accelerate`: ``AcceleratorCheckpoints`` for ``Accelerator.save_state``/``load_state``.
- :mod:`ckptstore.integrations.dcp`: ``StoreWriter`` / ``StoreReader`` for torch.distributed.checkpoint.
- ``ckptstore.CheckpointManager``: plain PyTorch loops (in the core package: it needs nothing but torch).
"""
