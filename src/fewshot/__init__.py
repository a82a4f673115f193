"""fewshot: meta-learning that trains for real.

The package is layered (see ``DESIGN.md``): :mod:`fewshot.data` → :mod:`fewshot.tasks` →
:mod:`fewshot.nn` → :mod:`fewshot.methods` → :mod:`fewshot.engine` → :mod:`fewshot.cli`.
Importing ``fewshot`` imports none of the optional extras (plotting, audio, TensorBoard, RL).
"""

from fewshot.errors import ConfigError, DataError, DataNotFoundError, FewshotError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "DataNotFoundError", "FewshotError", "__version__"]
