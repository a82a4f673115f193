"""Reading a dataset from its official zip or from the extracted folder, the same way."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

from fewshot.errors import DataError


def members(source: Path, prefix: str, suffixes: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    """``(path relative to prefix, bytes)`` for every file under ``prefix/`` ending in ``suffixes``.

    ``source`` is a zip whose entries start with ``prefix/`` or the extracted ``prefix`` folder.
    Entries are yielded in sorted order; only names are trusted, nothing is extracted to disk.
    """
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.name.endswith(suffixes):
                yield path.relative_to(source).as_posix(), path.read_bytes()
        return
    try:
        with zipfile.ZipFile(source) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                name = info.filename
                if not info.is_dir() and name.startswith(prefix + "/") and name.endswith(suffixes):
                    yield name[len(prefix) + 1:], zf.read(info)
    except zipfile.BadZipFile:
        raise DataError(f"{source} is not a readable zip file; replace it with the official archive.") from None


def find_source(root: Path, name: str) -> Path | None:
    """``root/name`` (extracted folder) or ``root/name.zip``, whichever exists."""
    if (root / name).is_dir():
        return root / name
    if (root / f"{name}.zip").is_file():
        return root / f"{name}.zip"
    return None
