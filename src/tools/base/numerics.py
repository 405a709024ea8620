"""Comparing two sets of outputs: one relative difference, and one tolerance per kind of comparison.

Every self-check of the project (conversion, export, ONNX Runtime and OpenVINO on the fly)
asks the same question: do these float32 logits match those? The answer is
``relative_difference`` against the tolerance that belongs to the comparison, never an ad-hoc
number. Measured values are about 1e-7 for all of them; the tolerances leave room for float32
summation order and nothing more.
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
