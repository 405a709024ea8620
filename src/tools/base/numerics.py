"""Comparing two sets of outputs: every self-check (conversion, export, engines on the fly) asks whether
these float32 logits match those, as ``relative_difference`` against the tolerance of its kind.
Measured values are about 1e-7; the tolerances leave room for float32 summation order only.
"""
import numpy as np

# A train-form network against its re-parameterized deploy form (fused in float64, cast once).
REPARAM_TOLERANCE = 1e-4
# One deploy network computed another way: an exported MINDIR/ONNX file, ONNX Runtime, OpenVINO
# in fp32. Same weights, same operations, other kernels.
BACKEND_TOLERANCE = 1e-4
# A checkpoint written and read back into a fresh network of the same form: the same numbers.
RELOAD_TOLERANCE = 1e-6


def relative_difference(actual, expected):
    """max |actual - expected| / max |expected|, in float64 (the absolute difference when expected is 0)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f'cannot compare outputs of shapes {actual.shape} and {expected.shape}')
    if actual.size == 0:
        return 0.0
    difference = float(np.abs(actual - expected).max())
    scale = float(np.abs(expected).max())
    return difference / scale if scale > 0 else difference
