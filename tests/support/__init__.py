"""Helpers shared by the integration and end-to-end tests: waiting, an inbox server, PostgreSQL, the
receiver stack on a virtual clock."""
