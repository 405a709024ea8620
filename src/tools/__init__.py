"""The machinery behind the top-level scripts, one folder per job:

- base/         what every job uses: one-line errors, atomic files, device set-up, output comparison
- training/     train.py's loop, optimizer, schedule, loss, mixed precision, ranks, run folder
- checkpoints/  the checkpoint format (written, read strictly), names and retention, resuming a run
- deployment/   model files for eval/infer (ckpt, MINDIR, ONNX), back-ends (MindSpore, ONNX Runtime,
                OpenVINO), export, scoring, prediction
- conversion/   official PyTorch / timm weights to checkpoints of this project, without torch
- demo_data.py  the scikit-learn digits demo set (python -m src.tools.demo_data DIR)

Dependencies point one way: base <- checkpoints <- {conversion, deployment} <- training
(tests/test_layout.py checks that src/ has no import cycle).
"""
