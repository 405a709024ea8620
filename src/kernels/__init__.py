"""Native kernels that MindSpore runs as custom ops (see onednn.py)."""
