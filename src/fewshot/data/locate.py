"""Where data lives: the data folder, the cache folder, and verified downloads.

Order of precedence for the data folder: an explicit ``data_dir`` (the CLI's ``--data-dir``),
then ``$FEWSHOT_DATA``, then ``~/.cache/fewshot``. Decoded arrays are cached in
``$FEWSHOT_CACHE`` (default ``~/.cache/fewshot/cache``) so that a read-only data folder works.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from fewshot.errors import DataError, DataNotFoundError
from fewshot.fileio import atomic_write

DEFAULT_HOME = Path("~/.cache/fewshot")


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder datasets are read from: ``data_dir`` > ``$FEWSHOT_DATA`` > ``~/.cache/fewshot``."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("FEWSHOT_DATA")
    if env:
        return Path(env).expanduser()
    return DEFAULT_HOME.expanduser()


def cache_root() -> Path:
    """The folder for decoded arrays (``$FEWSHOT_CACHE`` or ``~/.cache/fewshot/cache``)."""
    env = os.environ.get("FEWSHOT_CACHE")
    path = Path(env).expanduser() if env else DEFAULT_HOME.expanduser() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def downloads_allowed() -> bool:
    """Downloads are on unless ``$FEWSHOT_OFFLINE`` is set to a non-empty value other than 0."""
    return os.environ.get("FEWSHOT_OFFLINE", "") in ("", "0")


def file_digest(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, target: Path, digest: str, algorithm: str = "md5") -> Path:
    """Download ``url`` to ``target`` atomically and verify its checksum.

    The file is written to a temporary name in the target folder and renamed only after the
    checksum matches, so an interrupted or corrupted download never leaves a partial file.
    """
    if not downloads_allowed():
        raise DataNotFoundError(
            f"{target} is missing and downloads are off ($FEWSHOT_OFFLINE); "
            f"download {url} to {target} by hand or unset FEWSHOT_OFFLINE."
        )
    try:
        with atomic_write(target) as out, urllib.request.urlopen(url, timeout=60) as response:
            h = hashlib.new(algorithm)
            for chunk in iter(lambda: response.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
            if h.hexdigest() != digest:  # raising here discards the temporary file
                raise DataError(f"the download of {url} has {algorithm} {h.hexdigest()}, expected {digest}; "
                                f"the file was discarded, try again or put a verified copy at {target}.")
    except OSError as exc:  # network errors are OSErrors (URLError included)
        raise DataNotFoundError(
            f"{target} is missing and could not be downloaded from {url} ({exc}); "
            f"put the file there by hand or pass --data-dir / set FEWSHOT_DATA to a folder that has it."
        ) from exc
    return target
