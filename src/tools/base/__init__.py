"""Helpers every job uses; nothing here imports another package of src/tools."""
