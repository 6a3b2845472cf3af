"""The clients both processes share: the Temporal client (with the web process's bridge) and the
PyMongo client. Reads Django settings; imports nothing from worlds or temporal_worker."""
