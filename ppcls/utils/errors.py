"""Error types for mistakes a user can fix. Their messages name the file, line or key and
what to do; tools print them as one line without a traceback."""


class ConfigError(ValueError):
    """A config key or value that cannot be used."""


class WeightsError(ValueError):
    """A weights file that is missing, unreadable or belongs to another model."""
