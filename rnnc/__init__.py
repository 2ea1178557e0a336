"""rnnc: define a recurrent cell in a few lines, compile it to PyTensor, train it.

>>> import rnnc
>>> layer = rnnc.Recurrent("lstm", I=8, H=16)
>>> out = layer.run(np.zeros((2, 5, 8), "float32"))
>>> out.outputs["y"].shape, out.state["c"].shape
((2, 5, 16), (2, 16))
"""

from rnnc.compile import load_cell, parse
from rnnc.dsl import (
    abs,
    cell,
    concat,
    exp,
    layer_norm,
    log,
    maximum,
    minimum,
    relu,
    sigmoid,
    softplus,
    sqrt,
    tanh,
    where,
)
from rnnc.errors import RnncError, RnncWarning
from rnnc.ir import CellIR
from rnnc.layers import Bidirectional, Recurrent, RecurrentOutput, Stack
from rnnc.nn import Dense, Dropout, Embedding, one_hot, sequence_cross_entropy

__all__ = [
    "Bidirectional",
    "CellIR",
    "Dense",
    "Dropout",
    "Embedding",
    "Recurrent",
    "RecurrentOutput",
    "RnncError",
    "RnncWarning",
    "Stack",
    "abs",
    "cell",
    "concat",
    "exp",
    "layer_norm",
    "load_cell",
    "log",
    "maximum",
    "minimum",
    "one_hot",
    "parse",
    "relu",
    "sequence_cross_entropy",
    "sigmoid",
    "softplus",
    "sqrt",
    "tanh",
    "where",
]
__version__ = "0.1.0"
