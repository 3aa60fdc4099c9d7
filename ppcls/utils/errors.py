"""Error types for problems a user can fix. Their messages name the file, line or key and
what to do; tools print them as one line without a traceback (`--debug` shows it)."""

import difflib


class ConfigError(ValueError):
    """A config key or value that cannot be used."""


class WeightsError(ValueError):
    """A weights file that is missing, unreadable or belongs to another model."""


class DataError(ValueError):
    """A label list entry or an image file that cannot be used."""


class UnsafeFileError(WeightsError):
    """A pickled file that names a function, or uses an operation, outside the allow-list of
    its format: loading it could run code, so it is refused before anything in it runs."""


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) became NaN or infinite; nothing was saved after it."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after `latest` was saved."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


def did_you_mean(word, choices):
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(what, word, choices):
    """The error for a name that is not one of `choices`."""
    return ConfigError(f"unknown {what} {word!r}{did_you_mean(word, choices)}; allowed: "
                       + ", ".join(str(c) for c in choices))

