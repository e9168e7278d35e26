"""Shared test helpers live beside this file (pg_server.py); pytest puts this folder on sys.path."""
