"""The sink floor: the one writer (queue, batches, the transaction), spill files for what it
could not commit at shutdown, and the database liveness ping. The database's own start-up,
schema and rollups are `collector.db`."""
