"""Alembic's environment for cms: always run by cms.db (``cms db upgrade``, a new database,
the tests), which hands over the connection, inside the write transaction it opened."""

from alembic import context

from cms.db import schema

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise SystemExit("cms's migrations run through `cms db upgrade`, not the alembic command")

context.configure(connection=connection, target_metadata=schema.metadata,
                  render_as_batch=connection.dialect.name == "sqlite", compare_type=True,
                  compare_server_default=True)
with context.begin_transaction():
    context.run_migrations()
