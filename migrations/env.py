"""Alembic's environment for the decision history (pipeline/migrate.py runs it; there is no
alembic.ini: the store builds the Config in code and hands over its open connection)."""
from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table="crmbridge_schema_version")
with context.begin_transaction():
    context.run_migrations()
