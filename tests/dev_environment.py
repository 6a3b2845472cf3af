"""pytest plugin (``-p tests.dev_environment`` in pytest.ini): the tests run with
development settings. Loaded before pytest-django imports the settings, which
otherwise fail closed to production."""

import os

os.environ.setdefault("WORLDGEN_ENV", "development")
# Tests make many generate calls as one user; tests/test_access_limits.py lowers this rate where it counts.
os.environ.setdefault("API_GENERATE_THROTTLE_RATE", "100000/minute")
