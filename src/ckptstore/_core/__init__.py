"""Core types with no I/O: names, hashing, info records and plans, did-you-mean, failpoints."""
