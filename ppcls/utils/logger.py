"""The project's logger: one `ppcls` logger, console output on rank 0, optional log file."""

import logging
import os
import sys

_logger = logging.getLogger("ppcls")
_FORMAT = "[%(asctime)s] %(levelname)s: %(message)s"


def _rank():
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


class _ConsoleHandler(logging.StreamHandler):
    """Writes to the current sys.stdout, which pytest and notebooks replace."""

    def emit(self, record):
        self.stream = sys.stdout
        super().emit(record)


def setup(log_file=None, level=logging.INFO):
    """Send log lines to the console (and `log_file`) on rank 0; other ranks log errors only."""
    _logger.handlers.clear()
    _logger.propagate = False
    _logger.setLevel(level if _rank() == 0 else logging.ERROR)
    formatter = logging.Formatter(_FORMAT, datefmt="%Y/%m/%d %H:%M:%S")
    console = _ConsoleHandler()
    console.setFormatter(formatter)
    _logger.addHandler(console)
    if log_file and _rank() == 0:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        file_handler = logging.FileHandler(log_file, mode="a")
        file_handler.setFormatter(formatter)
        _logger.addHandler(file_handler)


def _ensure_setup():
    if not _logger.handlers:
        setup()


def info(msg, *args):
    _ensure_setup()
    _logger.info(msg, *args)


def warning(msg, *args):
    _ensure_setup()
    _logger.warning(msg, *args)


def error(msg, *args):
    _ensure_setup()
    _logger.error(msg, *args)
