"""What the ranks of a data-parallel run must agree on beyond the gradients: exact metrics (sums over
ranks), one model (BN moving statistics averaged before each evaluation and checkpoint, as timm's
distribute_bn), one run folder and one decision (rank 0's integers broadcast). One process: no
communication op is built.
"""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops


class _AllReduceSum(nn.Cell):
    def __init__(self):
        super().__init__()
        self.all_reduce = ops.AllReduce()

    def construct(self, x):
        return self.all_reduce(x)


class _BroadcastFromMain(nn.Cell):
    def __init__(self):
        super().__init__()
        self.broadcast = ops.Broadcast(0)

    def construct(self, x):
        return self.broadcast((x,))[0]


class _AverageParams(nn.Cell):
    def __init__(self, params, group_size):
        super().__init__()
        self.params = ms.ParameterTuple(params)
        self.scale = Tensor(1.0 / group_size, ms.float32)
        self.all_reduce = ops.AllReduce()

    def construct(self):
        for param in self.params:
            ops.assign(param, self.all_reduce(param) * self.scale)
        return self.scale


class Ranks:
    """Collective helpers for ``group_size`` ranks (all of them call each method together)."""

    def __init__(self, rank=0, group_size=1):
        self.rank = rank
        self.group_size = group_size
        self._sum = _AllReduceSum() if group_size > 1 else None
        self._broadcast = _BroadcastFromMain() if group_size > 1 else None
        self._average_cells = {}

    @property
    def is_main(self):
        return self.rank == 0

    def sum(self, values):
        """Element-wise sum over ranks of a float vector (float32 on the wire)."""
        if self._sum is None:
            return np.asarray(values, np.float64)
        return self._sum(Tensor(np.asarray(values, np.float32))).asnumpy().astype(np.float64)

    def barrier(self):
        """Return once every rank has called it (an all-reduce of one number)."""
        if self._sum is not None:
            self.sum([0.0])

    def from_main(self, values):
        """Rank 0's integers ``values`` (each within int32) on every rank, exactly: MindSpore 2.8 narrows
        a broadcast int64 to int32 without a word (2**40 + 5 arrived as 5)."""
        values = np.asarray(values, np.int64)
        if np.any(np.abs(values) >= 2 ** 31):
            raise ValueError(f'from_main sends int32 values, got {values}')
        if self._broadcast is None:
            return values.tolist()
        return self._broadcast(Tensor(values.astype(np.int32))).asnumpy().tolist()

    def average_params(self, key, params):
        """Every rank's ``params`` replaced by their mean over ranks; ``key``: its graph is compiled once."""
        if self.group_size == 1 or not params:
            return
        if key not in self._average_cells:
            self._average_cells[key] = _AverageParams(params, self.group_size)
        self._average_cells[key]()
