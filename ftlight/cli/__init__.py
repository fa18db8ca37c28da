"""The ``ftlight`` command line: Lightning's ``fit``/``validate``/``test`` plus ftlight's own
``predict``, ``export``, ``report`` and ``demo``."""

from ftlight.cli.main import main

__all__ = ["main"]
