"""Stage-script helpers: logging set-up, and exit status 1 with one line for an input error."""

import logging
import os
import sys
from collections.abc import Callable

# Errors caused by the user's input or settings (ParamsError and RawDataError are ValueErrors):
# logged as one line, without a traceback.
INPUT_ERRORS = (ValueError, FileNotFoundError)


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a stage's main() with INFO logging; exit with status 1 on an input error.

    Set FERPLUS_TRACEBACK=1 to see the full traceback of such an error.
    """
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        main()
    except INPUT_ERRORS as error:
        if os.environ.get("FERPLUS_TRACEBACK"):
            raise
        logging.getLogger(name).error("%s stage failed: %s", name, error)
        sys.exit(1)
