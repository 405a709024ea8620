"""The one home of checkpoints: format.py (what is written, how it is read), saver.py (names and
retention in a run folder), resume.py (where a run restarts and what it takes back)."""
