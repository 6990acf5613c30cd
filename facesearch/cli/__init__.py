"""``facesearch`` command line: thin commands that parse, call one library function and print."""

from __future__ import annotations

import importlib
import logging
import os

from facesearch.cli._app import app

# One module per pipeline stage; each registers its commands on import.
_COMMAND_MODULES = ("prepare", "train", "gallery", "cluster", "explain", "evaluate", "serve")

for _name in _COMMAND_MODULES:
    importlib.import_module(f"facesearch.cli.{_name}")


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("FACESEARCH_LOG", "WARNING").upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )
    app()


__all__ = ["app", "main"]
