"""``torch.compile`` for the small, hot functions of the memory networks (``model.compile``): the time steps of
the NTM and MANN.

A recurrent step is dozens of small element-wise operations on ``[B, N, W]`` memories, run T times forward
and backward: eager PyTorch pays one dispatch and one pass over memory per operation, the compiled function
fuses them. One compiled function per step function, created on first use and shared by all instances (dynamo
guards on the module it is called with and recompiles when the module or the grad mode changes).
The step is traced as one graph (``fullgraph=True``): a graph break is a defect of the step and raises.

A machine without a working C++ compiler fails in the backend while the forward step is compiled, on the
first call; that failure becomes one sentence saying to turn the switch off. The backward graph is compiled
later, inside the first ``backward()``, outside this wrapper: a backend failure there (rare where the forward
compiled) surfaces as torch raises it. Errors of the step itself — shapes, dtypes — pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fewshot.errors import ConfigError

_CACHE: dict[Callable[..., Any], Callable[..., Any]] = {}


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled once (``torch.compile(fn, dynamic=False, fullgraph=True)``, static shapes: one graph per size, up to
    dynamo's recompile limit, beyond which a ``fullgraph`` function raises).

    A backend failure while the forward step compiles (no C++ compiler, inductor error) is raised as
    :class:`ConfigError`.
    """
    from torch._dynamo.exc import BackendCompilerFailed  # here, not at import: loading dynamo costs ~1 s

    if fn not in _CACHE:
        inner = torch.compile(fn, dynamic=False, fullgraph=True)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return inner(*args, **kwargs)
            except BackendCompilerFailed as exc:  # InductorError and CppCompileError arrive as this type
                cause = str(exc.__cause__ or exc).strip().splitlines()
                reason = cause[0][:200] if cause else type(exc).__name__
                raise ConfigError(f"torch.compile could not build {fn.__qualname__} on this machine ({reason}); "
                                  f"set model.compile=false to run without it.") from exc

        _CACHE[fn] = call
    return _CACHE[fn]
