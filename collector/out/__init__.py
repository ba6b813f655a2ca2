"""Data out (issue 11): the committed-order feed (`feed`), its rows (`events`), the HTTP API on
the collector's server (`api`: stream, history, coverage) and webhook alerts (`alerts`)."""
