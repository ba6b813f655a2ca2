"""The database floor: which server (configured or embedded), connecting and waiting for it,
the schema (migrations) and the rollups kept beside it. Nothing here knows a source or the
writer; `cli migrate` and the supervisor both start the database through this package."""
