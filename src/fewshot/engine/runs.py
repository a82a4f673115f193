"""Run folders: resolved config, environment, metrics (JSONL) and results, written safely."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fewshot.errors import CheckpointError
from fewshot.fileio import atomic_write


def new_run_dir(name: str, root: str | os.PathLike = "runs") -> Path:
    """``<root>/<name>-<YYYYmmdd-HHMMSS>`` (suffixed when it exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{name}-{stamp}"
    i = 1
    while path.exists():
        path = Path(root) / f"{name}-{stamp}-{i}"
        i += 1
    return path


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def write_text(path: Path, text: str) -> None:
    """Write text atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def git_revision() -> str | None:
    """The git commit of the source tree the package runs from (``+dirty`` when modified)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary(threads: int, device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{os.cpu_count()}-core CPU ({threads} thread{'s' if threads > 1 else ''}), torch {torch.__version__}"


def environment(threads: int, device: str) -> dict[str, Any]:
    """Versions, machine, threads and git revision, saved as ``env.json`` in every run folder."""
    import numpy

    from fewshot import __version__

    return {"fewshot": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": numpy.__version__, "platform": platform.platform(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "threads": threads, "device": device, "revision": git_revision(),
            "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


class MetricsLog:
    """Append-only JSONL metrics, truncated to a step on resume so a resumed run equals an uninterrupted one."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = []
        for ln in self.path.read_text().splitlines():
            try:
                if json.loads(ln)["step"] <= step:
                    keep.append(ln)
            except (ValueError, KeyError, TypeError):
                pass  # a line half-written by a crash
        write_text(self.path, "".join(ln + "\n" for ln in keep))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]


def read_run_config(run: Path) -> dict[str, Any]:
    import yaml

    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run} is not a fewshot run folder (no config.yaml); name the folder that "
                              "`fewshot train` created.")
    return yaml.safe_load(path.read_text())
