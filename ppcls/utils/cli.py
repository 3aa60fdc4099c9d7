"""Entry-point wrapper: user errors become one line on stderr and exit code 2; `--debug`
shows the traceback instead."""

import sys

from ppcls.utils.errors import ConfigError, WeightsError

USER_ERRORS = (ConfigError, WeightsError)


def run(main, args):
    try:
        return main(args) or 0
    except USER_ERRORS as err:
        if getattr(args, "debug", False):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
