"""The one checkpoint format: atomic writes, ``weights_only`` reads, one clear error when damaged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fewshot.errors import CheckpointError
from fewshot.fileio import atomic_write

FORMAT = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A crash or Ctrl-C during the write leaves the previous checkpoint intact.
    """
    with atomic_write(path) as f:
        torch.save({"format": FORMAT, **state}, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a damaged file gives a :class:`CheckpointError`."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train first or name another run folder.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(f"checkpoint {path} is damaged or not a fewshot checkpoint "
                              f"({type(exc).__name__}); delete it and resume from another or retrain.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a fewshot checkpoint of format {FORMAT}; retrain.")
    return state
