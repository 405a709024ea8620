"""Running trained models: model files (model_files.py), what runs them (backends.py; OpenVINO in
openvino_engine.py), export (export.py), scoring (evaluation.py) and prediction (prediction.py)."""
