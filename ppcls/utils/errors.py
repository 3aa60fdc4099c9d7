"""Error types for problems a user can fix. Their messages name the file, line or key and
what to do; tools print them as one line without a traceback (`--debug` shows it)."""

import difflib
import reprlib


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


SHOWN_CHARACTERS = 60  # of a string echoed in a message
SHOWN_REPR = 80  # characters of any other value's repr

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxstring = _REPR.maxother = SHOWN_CHARACTERS


def digits(number):
    """How many decimal digits an integer has, without converting it (Python refuses to
    print one of more than 4300 digits)."""
    count = int((abs(number).bit_length() - 1) * 0.30102999566398120) + 1
    return count + 1 if abs(number) >= 10 ** count else count


def shown(value):
    """A value as a message echoes it: its repr cut to a readable length. Bounded work
    whatever the value (a YAML alias can make a list of a billion items that shares a few
    objects): reprlib looks at a few items of a few levels; a huge integer is described
    by its number of digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {digits(value)} digits"
    if isinstance(value, str) and len(value) > SHOWN_CHARACTERS:
        return f"{value[:SHOWN_CHARACTERS]!r}... ({len(value)} characters)"
    try:
        text = _REPR.repr(value)
    except ValueError:  # an integer too long to print, inside a container
        return f"a {type(value).__name__}"
    return text if len(text) <= SHOWN_REPR else text[:SHOWN_REPR] + "..."


def did_you_mean(word, choices):
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    word = str(word)[:100]  # difflib's work grows with the word's length
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(what, word, choices):
    """The error for a name that is not one of `choices`."""
    return ConfigError(f"unknown {what} {shown(word)}{did_you_mean(word, choices)}; allowed: "
                       + ", ".join(str(c) for c in choices))

