#!/usr/bin/env python
"""Django's command-line utility for worldgen."""

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


if __name__ == "__main__":
    main()
