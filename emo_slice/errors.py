"""One exception family. Every message says what is wrong and how to fix it.

Library code raises these; only the CLI prints them (one line, exit code 2).
"""


class EmoSliceError(Exception):
    """Base class: a problem the user can fix (bad path, bad flag, bad file)."""


class CheckpointError(EmoSliceError):
    """A checkpoint folder, shard, index or Hub id that cannot be read."""


class ConfigError(EmoSliceError):
    """A config.json we do not support, or an invalid model configuration."""


class UsageError(EmoSliceError):
    """A flag or argument value out of range, or inputs that do not fit together."""


class DataError(EmoSliceError):
    """An input data file (examples, tasks, corpus) that is empty or malformed."""
