#!/usr/bin/env python
"""Django's command-line utility for worldgen."""

import logging
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "worldgen_site.settings")
    from django.core.management import execute_from_command_line

    from worldgen_site.env import SettingsError

    try:
        execute_from_command_line(sys.argv)
    except SettingsError as exc:
        # One clear line instead of a traceback for a bad environment.
        print(f"worldgen: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as exc:
        _exit(exc.code)
    _exit(0)


def _exit(code: int | str | None) -> None:
    """Exit with ``code``; skip interpreter teardown once a Temporal client exists (its Rust threads
    can abort a finalizing interpreter: temporalio/sdk-python#300)."""
    temporal = sys.modules.get("clients.temporal")
    if temporal is None or not temporal.client_made:
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
