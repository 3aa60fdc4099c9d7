"""Entry-point wrapper: problems a user can fix become one line on stderr and a non-zero
exit code; `--debug` shows the traceback instead.

    2          a config, weights or data error (nothing was trained)
    1          training diverged (the last good checkpoint is kept)
    128 + N    stopped by signal N after saving `latest` (130 for Ctrl-C, 143 for SIGTERM)
"""

import sys

from ppcls.utils.errors import (ConfigError, DataError, TrainingDiverged,
                                TrainingInterrupted, WeightsError)

USER_ERRORS = (ConfigError, WeightsError, DataError)


def run(main, args):
    debug = getattr(args, "debug", False)
    try:
        return main(args) or 0
    except (*USER_ERRORS, TrainingDiverged) as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1 if isinstance(err, TrainingDiverged) else 2
    except TrainingInterrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return err.exit_code
