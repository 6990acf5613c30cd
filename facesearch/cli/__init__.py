"""``facesearch`` command line: thin commands that parse, call one library function and print."""

from __future__ import annotations

import importlib

from facesearch.cli._app import app

# One module per pipeline stage; each registers its commands on import.
_COMMAND_MODULES = ("prepare", "train", "gallery", "cluster", "explain", "evaluate", "serve")

for _name in _COMMAND_MODULES:
    importlib.import_module(f"facesearch.cli.{_name}")


def main() -> None:
    app()  # logging is set up by the app's callback (``_app.setup_logging``), where a bad FACESEARCH_LOG is reported


__all__ = ["app", "main"]
