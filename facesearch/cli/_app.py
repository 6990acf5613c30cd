"""The Typer application and its sub-apps, one per noun.

Command modules import these and decorate their functions onto them. Nothing heavy (torch, faiss,
sqlalchemy) is imported at module level anywhere under ``facesearch.cli``: ``facesearch --help`` must
stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

# The model a command uses, the same option with the same env var everywhere that has a default model.
Checkpoint = Annotated[Optional[Path], typer.Option(
    "--checkpoint", "-c", envvar="FACESEARCH_CHECKPOINT",
    help='Checkpoint file or training run folder; "base" is the model shipped with facesearch. '
         "(default: the gallery's model, else base)")]

app = typer.Typer(
    name="facesearch",
    no_args_is_help=True,
    add_completion=False,
    help="Face recognition trained on your own labelled photos: prepare, train, enroll, search, explain.",
)
cifar10_app = typer.Typer(no_args_is_help=True, help="Train and inspect a VGG16 CIFAR-10 classifier.")
identities_app = typer.Typer(no_args_is_help=True, help="List, show, rename, merge and remove identities.")
gallery_app = typer.Typer(no_args_is_help=True, help="Gallery statistics, consistency check, rebuild, re-embed.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic migrations).")
evaluate_app = typer.Typer(no_args_is_help=True, help="Measure accuracy: LFW pairs, open-set, closed-set.")

app.add_typer(cifar10_app, name="cifar10")
app.add_typer(identities_app, name="identities")
app.add_typer(gallery_app, name="gallery")
app.add_typer(db_app, name="db")
app.add_typer(evaluate_app, name="evaluate")
