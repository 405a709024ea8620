"""Official PyTorch and timm RepVGG weights as checkpoints of this project, read without torch."""
