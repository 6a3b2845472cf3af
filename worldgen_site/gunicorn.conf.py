"""gunicorn settings of the web process: ``gunicorn -c worldgen_site/gunicorn.conf.py worldgen_site.wsgi``.

A request may wait up to ``TEMPORAL_CALL_TIMEOUT_SECONDS`` for Temporal and then answer with a clear error,
so gunicorn kills a worker only well after that: ``timeout`` is that call timeout plus
``WEB_TIMEOUT_MARGIN_SECONDS``. Put an ingress or load balancer timeout above ``timeout``.
"""

import os
import sys

from django.conf import settings

from worldgen_site.env import SettingsError, env_int, env_str

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "worldgen_site.settings")
try:
    call_timeout = settings.TEMPORAL_CALL_TIMEOUT_SECONDS
except SettingsError as exc:  # one clear line instead of a traceback for a bad environment
    sys.exit(f"worldgen: configuration error: {exc}")

bind = env_str("WEB_BIND", "0.0.0.0:8000")
workers = env_int("WEB_CONCURRENCY", 4, minimum=1)
timeout = int(call_timeout) + env_int("WEB_TIMEOUT_MARGIN_SECONDS", 30, minimum=5)
graceful_timeout = 30  # the manifests' terminationGracePeriodSeconds is above it
preload_app = True  # the PyMongo client connects lazily; the Temporal client is made per process on first use
accesslog = "-"
