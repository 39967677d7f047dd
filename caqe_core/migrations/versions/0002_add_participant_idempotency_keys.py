"""Add a unique idempotency key to participants

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 00:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("idempotency_key", sa.String(length=200), nullable=True)
        )
    _copy_mturk_assignment_ids()
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.create_index(
            "ix_participants_idempotency_key",
            ["experiment_id", "recruiter", "idempotency_key"],
            unique=True,
        )


def _copy_mturk_assignment_ids() -> None:
    """Key each MTurk participant by its assignment id, so entries resume it.

    Before this revision two processes could start two participants for one
    assignment. Only the first of them gets the key. The others keep none,
    stay in the results, and no entry resumes them.
    """
    participants = sa.table(
        "participants",
        sa.column("id", sa.Integer()),
        sa.column("experiment_id", sa.Integer()),
        sa.column("recruiter", sa.String()),
        sa.column("external_data", sa.JSON()),
        sa.column("idempotency_key", sa.String()),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(
            participants.c.id,
            participants.c.experiment_id,
            participants.c.external_data,
        )
        .where(participants.c.recruiter == "mturk")
        .order_by(participants.c.id)
    ).all()
    keys: dict[int, str] = {}
    seen: set[tuple[int, str]] = set()
    for row in rows:
        assignment_id = (row.external_data or {}).get("assignmentId")
        if not isinstance(assignment_id, str) or not assignment_id:
            continue
        if (row.experiment_id, assignment_id) in seen:
            continue
        seen.add((row.experiment_id, assignment_id))
        keys[row.id] = assignment_id
    if not keys:
        return
    connection.execute(
        sa.update(participants)
        .where(participants.c.id == sa.bindparam("participant_id"))
        .values(idempotency_key=sa.bindparam("assignment_id")),
        [
            {"participant_id": participant_id, "assignment_id": assignment_id}
            for participant_id, assignment_id in keys.items()
        ],
    )


def downgrade() -> None:
    # Not in batch mode: on SQLite that would copy the table and drop the
    # original, and with foreign keys on, the drop deletes every row that
    # references a participant. SQLite 3.35 and newer drop a column in place.
    op.drop_index("ix_participants_idempotency_key", table_name="participants")
    op.drop_column("participants", "idempotency_key")
