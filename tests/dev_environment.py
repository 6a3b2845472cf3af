"""pytest plugin (``-p tests.dev_environment`` in pytest.ini): the tests run with
development settings. Loaded before pytest-django imports the settings, which
otherwise fail closed to production."""

import os

os.environ.setdefault("WORLDGEN_ENV", "development")
