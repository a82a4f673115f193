"""Shared fixtures. Every test runs offline, with its own cache folder per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _omniglot_root() -> Path | None:
    for candidate in (os.environ.get("FEWSHOT_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "omniglot" / "images_background.zip").exists():
            return Path(candidate).resolve()
        if candidate and (Path(candidate) / "omniglot" / "images_background").is_dir():
            return Path(candidate).resolve()
    return None


OMNIGLOT = _omniglot_root()


@pytest.fixture(scope="session", autouse=True)
def _offline_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("fewshot-cache")
    old = {k: os.environ.get(k) for k in ("FEWSHOT_CACHE", "FEWSHOT_OFFLINE", "FEWSHOT_DATA")}
    os.environ["FEWSHOT_CACHE"] = str(cache)
    os.environ["FEWSHOT_OFFLINE"] = "1"
    os.environ.pop("FEWSHOT_DATA", None)
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    """The folder that holds omniglot/ (skips the test when the real data is not here)."""
    if OMNIGLOT is None:
        pytest.skip("real Omniglot not found (set FEWSHOT_DATA or put it at ../shared/data)")
    return OMNIGLOT
