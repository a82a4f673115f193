"""Errors for bad input: each carries one sentence that names the setting or file and the fix.

The CLI prints the message and exits with code 2; API users catch ``ValueError`` or
``FileNotFoundError`` as usual.
"""


class FewshotError(ValueError):
    """Bad input: a setting, file or argument that cannot be used as given."""


class ConfigError(FewshotError):
    """An unknown, missing or invalid configuration setting."""


class DataError(FewshotError):
    """A dataset that is present but wrong (counts, corrupt files, impossible task settings)."""


class DataNotFoundError(FewshotError, FileNotFoundError):
    """A dataset or file that is not where it should be."""


class CheckpointError(FewshotError):
    """A checkpoint or run folder that cannot be read."""
