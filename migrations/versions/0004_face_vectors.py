"""face_vectors: each face's embedding as pgvector's halfvec, for galleries whose vectors live in PostgreSQL.

Only on PostgreSQL, and only where the pgvector extension is available to the server: there the extension is
created (when allowed) and the table added; elsewhere (SQLite, a PostgreSQL without pgvector) nothing changes,
and choosing the pgvector store later says which extension is missing (``facesearch.gallery.vectors.pgvector_sql``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    from facesearch.gallery.vectors import pgvector_sql

    bind = op.get_bind()
    if bind.dialect.name == "postgresql" and pgvector_sql.extension_available(bind):
        pgvector_sql.create_schema(bind)


def downgrade() -> None:
    from facesearch.gallery.models import FaceVector

    FaceVector.__table__.drop(op.get_bind(), checkfirst=True)
