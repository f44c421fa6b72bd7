"""What every stage script shares: logging set-up and turning expected errors into exit status 1."""

import logging
import sys
from collections.abc import Callable

from ferplus.params import ParamsError
from ferplus.readers import RawDataError

# Errors caused by the user's input or settings: logged as one line, without a traceback.
INPUT_ERRORS = (ParamsError, RawDataError, FileNotFoundError)


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a stage's main() with INFO logging; exit with status 1 on an input error."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        main()
    except INPUT_ERRORS as error:
        logging.getLogger(name).error("%s stage failed: %s", name, error)
        sys.exit(1)
