"""gallery_state.model_source: which checkpoint the gallery's embeddings come from, so that commands given
only the gallery load that model ("base" for the shipped base model, else the checkpoint's absolute path).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("gallery_state") as batch:
        batch.add_column(sa.Column("model_source", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gallery_state") as batch:
        batch.drop_column("model_source")
