"""train.py's machinery: the loop, optimizer, schedule, loss, mixed precision, ranks, run folder, resuming."""
