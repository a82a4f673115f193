"""``torch.compile`` for the per-time-step functions of the recurrent memory networks (``model.compile``).

A recurrent step is dozens of small element-wise operations on ``[B, N, W]`` memories, run T times forward
and backward: eager PyTorch pays one dispatch and one pass over memory per operation, the compiled step
fuses them. One compiled function per step function, created on first use and shared by all instances
(dynamo guards on the module it is called with and recompiles when the module or the grad mode changes).
A machine without a working C++ compiler gets one sentence saying to turn the switch off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fewshot.errors import ConfigError

_CACHE: dict[Callable[..., Any], Callable[..., Any]] = {}


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled once with static shapes (``torch.compile(fn, dynamic=False)``), failing with a clear message."""
    if fn not in _CACHE:
        inner = torch.compile(fn, dynamic=False)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return inner(*args, **kwargs)
            except Exception as exc:  # dynamo/inductor failures surface as many exception types
                if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                    raise ConfigError(f"torch.compile failed on this machine ({type(exc).__name__}); set "
                                      f"model.compile=false to run without it.") from exc
                raise

        _CACHE[fn] = call
    return _CACHE[fn]
