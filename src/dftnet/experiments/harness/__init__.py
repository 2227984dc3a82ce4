"""What every training run shares: run folders and their lock, atomic writes and checkpoints, the
training loop with its divergence guard, interrupts and out-of-memory handling, DDP, the memory
preflight and what reproducing a run needs."""
