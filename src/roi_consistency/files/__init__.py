"""The files the tool writes and reads back: every write atomic (atomic.py), one run per output
(lock.py), the checkpoint format (checkpoint.py) and the exported folder (exported.py)."""
