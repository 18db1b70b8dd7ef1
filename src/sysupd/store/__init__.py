"""Persistent state in the state directory: the SQLite database and what is kept in it."""
