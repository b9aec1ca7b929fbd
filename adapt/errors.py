"""The errors adapt raises for its users: each message names the setting or file and says what to do.

This module imports nothing, so any layer can raise them and the CLI can catch them without importing the rest.
"""


class ConfigError(ValueError):
    """A setting that cannot work (a recipe key, a command-line option, a checkpoint of the wrong kind)."""


class DataError(ValueError):
    """A dataset, class file or image that cannot be used."""


class TrainingStopped(RuntimeError):
    """A run stopped on purpose (a non-finite loss); the message says where and what is left."""


class StageFailed(RuntimeError):
    """A stage of ``adapt run`` failed; ``exit_code`` is its own (a fit process's exit status, 143 when
    interrupted), and ``adapt run`` exits with it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
