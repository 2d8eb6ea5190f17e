"""One logging setup for every process: time, component, level and message."""

import logging
import sys

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure(level: str = "INFO") -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=FORMAT)
