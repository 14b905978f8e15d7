"""Alembic environment: runs on a connection handed over by db.engine.upgrade (or `-x url=...`)."""
from alembic import context

from db.models import Base

config = context.config
connection = config.attributes.get("connection")


def run(conn) -> None:
    context.configure(connection=conn, target_metadata=Base.metadata,
                      render_as_batch=conn.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:
    import sqlalchemy as sa

    from db.engine import resolve_url

    url = resolve_url(context.get_x_argument(as_dictionary=True).get("url"))
    with sa.create_engine(url).connect() as conn:
        run(conn)
