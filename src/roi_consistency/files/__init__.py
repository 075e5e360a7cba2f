"""The files the tool writes and reads back: every write atomic (atomic.py), every user's text file read
one way (text.py), one run per output (lock.py), and the checkpoint format (checkpoint.py). The exported
folder's format is model/exported.py."""
