"""Error types for problems a user can fix. Their messages name the file, line or key and
what to do; tools print them as one line without a traceback (`--debug` shows it)."""


class ConfigError(ValueError):
    """A config key or value that cannot be used."""


class WeightsError(ValueError):
    """A weights file that is missing, unreadable or belongs to another model."""


class DataError(ValueError):
    """A label list entry or an image file that cannot be used."""


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) became NaN or infinite; nothing was saved after it."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after `latest` was saved."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum
