"""gallery_state.vectors_digest: the XOR of every face's vector hash, which an index file must match to be used
(an index copied from a sibling gallery has the same uid, epoch and face ids, but other vectors). An existing
gallery's digest is computed here from its stored embeddings.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

CHUNK = 5000  # faces read at a time


def upgrade() -> None:
    from facesearch.gallery.digest import EMPTY, combine, vector_hashes

    with op.batch_alter_table("gallery_state") as batch:
        batch.add_column(sa.Column("vectors_digest", sa.String(length=16), nullable=False,
                                   server_default=EMPTY))
    bind = op.get_bind()
    faces = sa.table("faces", sa.column("id"), sa.column("embedding"))
    value, last = EMPTY, None
    while True:  # by id ranges, so that a large gallery is never read whole
        query = sa.select(faces.c.id, faces.c.embedding).order_by(faces.c.id).limit(CHUNK)
        rows = bind.execute(query if last is None else query.where(faces.c.id > last)).all()
        if not rows:
            break
        value = combine(vector_hashes([r[0] for r in rows], [r[1] for r in rows]), value)
        last = rows[-1][0]
    state = sa.table("gallery_state", sa.column("id"), sa.column("vectors_digest"))
    bind.execute(sa.update(state).values(vectors_digest=value))
    with op.batch_alter_table("gallery_state") as batch:  # the models give no server default
        batch.alter_column("vectors_digest", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("gallery_state") as batch:
        batch.drop_column("vectors_digest")
