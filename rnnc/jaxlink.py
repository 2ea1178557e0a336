"""rnnc's JAX linker: functions that pickle with their XLA executable, compiled ahead of time.

A function PyTensor compiles for JAX is a ``jax.jit`` of the graph turned into JAX
code. Its first call traces that code, lowers it to StableHLO and compiles it, or finds
it in JAX's persistent cache, whose key is the lowered module: tracing and lowering
come first either way. A new process that loaded an LSTM gradient from rnnc's cache
spent 0.2 s on them, and 0.1-0.15 s more on importing PyTensor's JAX dispatch and
turning the graph into JAX code: 1.0-1.1 s from its start to the first result, half
of it importing JAX and PyTensor.

:class:`JAXLinker` is PyTensor's JAX linker with one change. Before rnnc's cache
pickles a function (:func:`compile_ahead`), the linker compiles it ahead of time for
the shapes of its inputs (the explicit ones by their static type, shared variables by
their value; ``jax.jit(...).lower(...).compile()``), the function calls that
executable from then on, and the pickle keeps it
(``jax.experimental.serialize_executable``). Loading the pickle deserialises the
executable: no dispatch import, no graph conversion, no tracing, no lowering, no XLA.
A call with arguments of other shapes or dtypes than those (a shared variable given a
value of another shape) goes PyTensor's way from then on, as does everything when a
step of this fails.

The ahead-of-time compile bypasses JAX's persistent cache: XLA:CPU cannot serialise
again an executable it loaded from that cache (jax 0.10.2: the copy fails when
called, "Function ... not found"). So filling rnnc's cache compiles XLA even where
JAX's cache holds the program, and the program is not added to JAX's cache (rnnc's
holds it).

Measured (medium LSTM forward + gradient, 2 cores, 2026-12-05): a new process to its
first result with a hit in rnnc's cache 0.73-0.82 s, against 0.98-1.12 s before
(docs/backends.md, "Executables in rnnc's cache").
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from pytensor.link.jax.linker import JAXLinker as _PyTensorJAXLinker

__all__ = ["JAXLinker", "compile_ahead"]

_LOADED = object()  # what fgraph_convert returns when the executable was deserialised
_TRANSIENT = ("_call", "_inputs", "_convert", "_loaded")  # attributes never pickled


class _Call:
    """What PyTensor's thunk calls: the executable compiled ahead of time while the
    arguments fit it, else the jitted function (made when first needed)."""

    __slots__ = ("compiled", "jitted", "make_jitted")

    def __init__(
        self,
        compiled: Any = None,
        jitted: Any = None,
        make_jitted: Callable[[], Any] | None = None,
    ) -> None:
        self.compiled = compiled
        self.jitted = jitted
        self.make_jitted = make_jitted

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except TypeError:  # arguments of other shapes or dtypes than compiled for
                self.compiled = None
        if self.jitted is None:
            self.jitted = self.make_jitted()
        return self.jitted(*args)


class JAXLinker(_PyTensorJAXLinker):
    """PyTensor's JAX linker whose functions pickle with an executable compiled ahead
    of time (module docstring). It also applies :func:`rnnc.jaxsetup.setup` before it
    turns a graph into JAX code."""

    _serialized: tuple | None = None  # (executable, in_tree, out_tree)
    _call: _Call | None = None
    _inputs: list | None = None  # the thunk's input storage

    def fgraph_convert(self, fgraph: Any, input_storage: Any, storage_map: Any, **kwargs: Any):
        def convert() -> Any:
            from rnnc import jaxsetup

            jaxsetup.setup()
            return super(JAXLinker, self).fgraph_convert(
                fgraph, input_storage=input_storage, storage_map=storage_map, **kwargs
            )

        self._convert = convert
        if self._serialized is not None and not self.scalar_shape_inputs:
            self._loaded = _deserialize(self._serialized)
            if self._loaded is not None:
                return _LOADED
            self._serialized = None
        return convert()

    def jit_compile(self, fn: Any) -> Any:
        convert, self._convert = self._convert, None
        if fn is _LOADED:
            loaded, self._loaded = self._loaded, None
            self._call = _Call(
                loaded, make_jitted=lambda: super(JAXLinker, self).jit_compile(convert())
            )
            return self._call
        jitted = super().jit_compile(fn)
        if self.scalar_shape_inputs:  # shapes given by scalar inputs: compiled per value
            return jitted
        self._call = _Call(jitted=jitted)
        return self._call

    def create_thunk_inputs(self, storage_map: dict) -> list:
        from numpy.random import Generator

        inputs = [storage_map[var] for var in self.fgraph.inputs]
        if any(isinstance(s[0], Generator) for s in inputs):  # needs PyTensor's conversion
            return super().create_thunk_inputs(storage_map)
        self._inputs = inputs
        return inputs

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in _TRANSIENT}

    def compile_ahead(self) -> bool:
        """Compile the function made with this linker for the shapes of its inputs,
        make it call that executable and keep the executable for pickling; False
        where it cannot (module docstring)."""
        if self._serialized is None:
            self._serialized = self._compile()
        return self._serialized is not None

    def _compile(self) -> tuple | None:
        call, specs = self._call, self._input_specs()
        if call is None or call.jitted is None or specs is None:
            return None
        try:
            from jax.experimental.serialize_executable import serialize

            with _without_persistent_cache():
                compiled = call.jitted.lower(*specs).compile()
            serialized = serialize(compiled)
        except Exception:  # anything JAX cannot do here: PyTensor's way
            return None
        call.compiled = compiled
        return serialized

    def _input_specs(self) -> list | None:
        """``jax.ShapeDtypeStruct`` of each input: the static shape of an explicit
        input, the value's shape of a shared one; None if some input has neither."""
        import jax
        import numpy as np
        from pytensor.compile.sharedvalue import SharedVariable
        from pytensor.tensor.type import TensorType

        if self._inputs is None:
            return None
        specs = []
        for var, storage in zip(self.fgraph.inputs, self._inputs, strict=True):
            if not isinstance(var.type, TensorType):
                return None
            shape = var.type.shape
            if None in shape:
                if not isinstance(var, SharedVariable) or storage[0] is None:
                    return None
                shape = np.shape(storage[0])
            specs.append(jax.ShapeDtypeStruct(tuple(shape), var.type.dtype))
        return specs


def _deserialize(serialized: tuple) -> Any:
    """The executable that ``jax.experimental.serialize_executable.serialize`` wrote,
    loaded; None if that fails (another jaxlib, another device).

    JAX's 64-bit mode is set as importing PyTensor's JAX dispatch sets it (on when
    ``floatX`` is float64), which this path skips: with it off, JAX would turn float64
    arguments into float32 ones, which the executable refuses."""
    try:
        import jax
        from jax.experimental.serialize_executable import deserialize_and_load
        from pytensor import config

        if "pytensor.link.jax.dispatch.basic" not in sys.modules:
            jax.config.update("jax_enable_x64", config.floatX == "float64")
        return deserialize_and_load(*serialized)
    except Exception:  # any failure: the function is converted again
        return None


@contextlib.contextmanager
def _without_persistent_cache() -> Iterator[None]:
    """JAX's persistent cache off for the compiles inside (module docstring says why).

    JAX decides once per process whether it uses the cache and keeps the answer in a
    private flag, which this sets aside for the duration; where that flag is gone (a
    later JAX) nothing is compiled ahead, as the error is raised before compiling.
    """
    import jax
    from jax._src import compilation_cache as cc

    if not hasattr(cc, "_cache_used"):
        raise RuntimeError("this JAX keeps no flag for its persistent cache")
    cc.is_cache_used(jax.devices()[0].client)  # the answer is settled before the swap
    saved, cc._cache_used = cc._cache_used, False
    try:
        yield
    finally:
        cc._cache_used = saved


def compile_ahead(built: Any) -> None:
    """:meth:`JAXLinker.compile_ahead` for each function of ``built`` (a compiled
    function, or a tuple or list holding some) made with rnnc's JAX linker; what
    :func:`rnnc.cache.cached_function` does before it pickles a function."""
    for item in built if isinstance(built, tuple | list) else (built,):
        linker = getattr(getattr(item, "maker", None), "linker", None)
        if isinstance(linker, JAXLinker):
            linker.compile_ahead()
