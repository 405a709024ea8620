"""Running trained models: model files (model_files.py), what runs them (backends.py, onednn/),
export (export.py), scoring (evaluation.py) and prediction (prediction.py)."""
