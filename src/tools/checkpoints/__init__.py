"""The one home of checkpoints: format.py (what is written, how it is read), saver.py (names and
retention in a run folder). Where a run restarts from them: src/tools/training/resume.py."""
