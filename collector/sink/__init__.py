"""Postgres side: migrations and the batching writer."""
