"""worldgen settings. Every deployment value comes from the environment.

Fail closed: unless ``WORLDGEN_ENV`` is exactly ``development`` (which
``make demo``, ``make test`` and ``python -m localstack`` set), this is
production: the secrets are mandatory, ``DEBUG`` is forbidden and the secure
settings that ``manage.py check --deploy`` expects are on. Secrets are masked
on debug pages and in logs (``worldgen_site.logs``). The README's
configuration table lists every variable.
"""

from datetime import timedelta
from pathlib import Path

from worldgen_site.env import (
    SettingsError,
    env_bool,
    env_database,
    env_float,
    env_host_port,
    env_int,
    env_key_ring,
    env_list,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
LOCAL_DATA_DIR = BASE_DIR / ".localdata"

# Anything but the explicit "development" (unset, "staging", a typo) is production.
PRODUCTION = env_str("WORLDGEN_ENV", "production") != "development"
WORLDGEN_ENV = "production" if PRODUCTION else "development"
_PROD = "in production (WORLDGEN_ENV is not development)"

_DEV_SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"
SECRET_KEY = env_str("SECRET_KEY", "" if PRODUCTION else _DEV_SECRET_KEY)
if PRODUCTION and not SECRET_KEY:
    raise SettingsError(f"SECRET_KEY is required {_PROD}")
if PRODUCTION and (len(SECRET_KEY) < 50 or SECRET_KEY == _DEV_SECRET_KEY):
    raise SettingsError(f"SECRET_KEY must be a random string of at least 50 characters {_PROD}")

DEBUG = env_bool("DEBUG", not PRODUCTION)
if PRODUCTION and DEBUG:
    raise SettingsError(f"DEBUG must be false {_PROD}")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise SettingsError(f"ALLOWED_HOSTS is required {_PROD} (comma-separated host names)")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "clients",
    "worlds",
    "temporal_worker",
    "axes",  # admin login lockouts (AXES_* below); its migrations add the AccessAttempt table
]

MIDDLEWARE = [
    "worldgen_site.health.HealthMiddleware",  # before host checks and the HTTPS redirect: probes use the pod IP
    "worldgen_site.metrics.MetricsMiddleware",  # times every request but the probes; serves /metrics
    "worldgen_site.tracing.TracingMiddleware",  # a span per request while TRACING_ENABLED
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a locked-out login into the lockout page (429)
]

# Axes' backend first: it refuses a locked-out username + address before the password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "worldgen_site.urls"
WSGI_APPLICATION = "worldgen_site.wsgi.application"
ASGI_APPLICATION = "worldgen_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env_database("DATABASE_URL", f"sqlite:///{LOCAL_DATA_DIR / 'db.sqlite3'}")}
# Web processes and the worker's Django thread keep their SQL connection this long, checked before reuse.
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 300)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["NAME"] == str(LOCAL_DATA_DIR / "db.sqlite3"):
    LOCAL_DATA_DIR.mkdir(exist_ok=True)  # the default local database lives there
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web requests and worker threads write at once: take the write lock up front and wait for it.
    DATABASES["default"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))

# --- Security (production) -------------------------------------------------
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Behind a TLS-terminating proxy that sets X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

# --- MongoDB: generated content and generation tasks -------------------------
MONGO_URI = env_url("MONGO_URI", "mongodb://127.0.0.1:27017/?retryWrites=false", schemes=("mongodb", "mongodb+srv"))
MONGO_DB = env_str("MONGO_DB", "worldgen")
MONGO_MAX_POOL_SIZE = env_int("MONGO_MAX_POOL_SIZE", 20, minimum=1)
MONGO_SERVER_SELECTION_TIMEOUT_MS = env_int("MONGO_SERVER_SELECTION_TIMEOUT_MS", 5000, minimum=100)

# --- Temporal ------------------------------------------------------------------
TEMPORAL_ADDRESS = env_host_port("TEMPORAL_ADDRESS", "127.0.0.1:7233")
TEMPORAL_NAMESPACE = env_str("TEMPORAL_NAMESPACE", "default")
TEMPORAL_TLS = env_bool("TEMPORAL_TLS", False)
TEMPORAL_API_KEY = env_str("TEMPORAL_API_KEY", "")  # Temporal Cloud; never put in workflow inputs
# Payload encryption (clients/codec.py): keyid:base64key[,...]; the first encrypts, all decrypt. Off if unset.
TEMPORAL_PAYLOAD_KEYS = env_key_ring("TEMPORAL_PAYLOAD_KEYS")
# The Temporal UI, for the admin's links and the codec endpoint's CORS origin; no links in production unless set.
TEMPORAL_UI_URL = env_str("TEMPORAL_UI_URL", "" if PRODUCTION else "http://127.0.0.1:8233")
if TEMPORAL_UI_URL:
    TEMPORAL_UI_URL = env_url("TEMPORAL_UI_URL", TEMPORAL_UI_URL, schemes=("http", "https")).rstrip("/")
# Workflows carry WorldId, RunNumber, WorldName and RunKind (generation/search_attributes.py); the namespace
# must have them (docs/OPERATIONS.md: the worker stops at start-up if not), or turn them off here.
TEMPORAL_SEARCH_ATTRIBUTES = env_bool("TEMPORAL_SEARCH_ATTRIBUTES", True)
# How long the web process waits for Temporal's answer (a start that gets none is checked later).
TEMPORAL_CALL_TIMEOUT_SECONDS = env_float("TEMPORAL_CALL_TIMEOUT_SECONDS", 30.0, minimum=0.1)
TEMPORAL_TASK_QUEUE_WORKFLOWS = env_str("TEMPORAL_TASK_QUEUE_WORKFLOWS", "worldgen-workflows")
TEMPORAL_TASK_QUEUE_LLM = env_str("TEMPORAL_TASK_QUEUE_LLM", "worldgen-llm")
TEMPORAL_TASK_QUEUE_MEDIA = env_str("TEMPORAL_TASK_QUEUE_MEDIA", "worldgen-media")

# Worker defaults; `run_temporal_worker` options override them per process.
WORKER_MAX_CONCURRENT_ACTIVITIES = env_int("WORKER_MAX_CONCURRENT_ACTIVITIES", 100, minimum=1)
WORKER_MAX_CONCURRENT_WORKFLOW_TASKS = env_int("WORKER_MAX_CONCURRENT_WORKFLOW_TASKS", 100, minimum=1)
# Workflows kept in a worker's memory between their tasks; an evicted one is replayed from history next time.
WORKER_MAX_CACHED_WORKFLOWS = env_int("WORKER_MAX_CACHED_WORKFLOWS", 1000, minimum=0)
# Threads (each with its SQL connection) for a worker's Django writes: run status mirrors and the like.
WORKER_DJANGO_THREADS = env_int("WORKER_DJANGO_THREADS", 4, minimum=1)
WORKER_GRACEFUL_SHUTDOWN_SECONDS = env_int("WORKER_GRACEFUL_SHUTDOWN_SECONDS", 30)
WORKER_CONNECT_TIMEOUT_SECONDS = env_int("WORKER_CONNECT_TIMEOUT_SECONDS", 120)
# Holds across all workers: Temporal enforces it on the LLM task queue.
LLM_RATE_LIMIT_PER_SECOND = env_float("LLM_RATE_LIMIT_PER_SECOND", 50.0)

# Generation defaults (per run; snapshotted into the workflow input).
GENERATION_APPROVAL_TIMEOUT_SECONDS = env_int("GENERATION_APPROVAL_TIMEOUT_SECONDS", 7 * 24 * 3600, minimum=1)
GENERATION_MAX_BIBLE_REVISIONS = env_int("GENERATION_MAX_BIBLE_REVISIONS", 3)
GENERATION_CHARACTER_CONCURRENCY = env_int("GENERATION_CHARACTER_CONCURRENCY", 5, minimum=1)
# A run's LLM and image activities heartbeat every fifth of this: a cancel reaches them that fast, a lost worker's
# activity is retried after it, and each heartbeat is a call to Temporal (a billed action on Temporal Cloud).
GENERATION_HEARTBEAT_TIMEOUT_SECONDS = env_int("GENERATION_HEARTBEAT_TIMEOUT_SECONDS", 60, minimum=5)
# Items (characters with their posts, plans, posts) may fail for good and the run goes on, up to this share of
# its characters + posts; past it, the run fails.
GENERATION_MAX_FAILED_SHARE = env_float("GENERATION_MAX_FAILED_SHARE", 0.2, minimum=0.0)
GENERATION_MAX_TOKEN_BUDGET = env_int("GENERATION_MAX_TOKEN_BUDGET", 5_000_000, minimum=1000)
# A live world's day spends at most this (its whole life is capped by its token budget, at most the one above).
LIVE_MAX_DAILY_TOKEN_BUDGET = env_int("LIVE_MAX_DAILY_TOKEN_BUDGET", 200_000, minimum=1000)
WORLD_PREMISE_MAX_CHARS = env_int("WORLD_PREMISE_MAX_CHARS", 4000, minimum=100)
REVIEW_FEEDBACK_MAX_CHARS = env_int("REVIEW_FEEDBACK_MAX_CHARS", 2000, minimum=100)
# Run rows are checked against Temporal (workflows that ended, were terminated elsewhere or vanished).
RECONCILE_INTERVAL_SECONDS = env_int("RECONCILE_INTERVAL_SECONDS", 60, minimum=0)  # in each worker; 0 = off
RECONCILE_START_GRACE_SECONDS = env_int("RECONCILE_START_GRACE_SECONDS", 120, minimum=1)

# --- Upstreams ---------------------------------------------------------------------
LLM_BASE_URL = env_url("LLM_BASE_URL", "http://127.0.0.1:8090/v1", schemes=("http", "https"))
LLM_API_KEY = env_str("LLM_API_KEY", "")
LLM_MODEL = env_str("LLM_MODEL", "worldgen-procedural-1")
# Models a world may choose as its model_override (the default model is always allowed).
LLM_ALLOWED_MODELS = list(dict.fromkeys([LLM_MODEL, *env_list("LLM_ALLOWED_MODELS", [])]))
LLM_TIMEOUT_SECONDS = env_float("LLM_TIMEOUT_SECONDS", 120.0, minimum=1.0)
# A provider that is down (5xx, 429, timeouts) is retried without limit, at most this many seconds apart.
LLM_RETRY_MAX_INTERVAL_SECONDS = env_float("LLM_RETRY_MAX_INTERVAL_SECONDS", 300.0, minimum=1.0)
# Send per-stage sampling parameters (temperature, top_p, penalties; generation/prompts.py).
LLM_SEND_SAMPLING = env_bool("LLM_SEND_SAMPLING", True)
MEDIA_GRPC_TARGET = env_host_port("MEDIA_GRPC_TARGET", "127.0.0.1:50051")
# TLS to the media service, verified with the system's roots or MEDIA_GRPC_CA_FILE's (PEM).
MEDIA_GRPC_TLS = env_bool("MEDIA_GRPC_TLS", False)
MEDIA_GRPC_CA_FILE = env_str("MEDIA_GRPC_CA_FILE", "")
if MEDIA_GRPC_CA_FILE and not MEDIA_GRPC_TLS:
    raise SettingsError("MEDIA_GRPC_CA_FILE is set but MEDIA_GRPC_TLS is false: set MEDIA_GRPC_TLS=true or unset it")
if MEDIA_GRPC_CA_FILE and not Path(MEDIA_GRPC_CA_FILE).is_file():
    raise SettingsError(f"MEDIA_GRPC_CA_FILE must be a readable PEM file, got {MEDIA_GRPC_CA_FILE!r}")

# --- Metrics (worldgen_site/metrics.py) ---------------------------------------------
# GET /metrics answers only "Authorization: Bearer <METRICS_TOKEN>"; off (404) while unset.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
# Several server processes (gunicorn workers): an empty directory they share, read by prometheus-client too.
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR", "")

# --- Tracing (clients/tracing.py): OpenTelemetry spans over OTLP/HTTP, off by default ------------------
TRACING_ENABLED = env_bool("TRACING_ENABLED", False)
# The collector's OTLP/HTTP base URL (spans go to <it>/v1/traces); OTEL_EXPORTER_OTLP_HEADERS adds auth.
OTEL_EXPORTER_OTLP_ENDPOINT = env_url("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318", schemes=("http", "https"))
OTEL_SERVICE_NAME = env_str("OTEL_SERVICE_NAME", "worldgen")  # e.g. worldgen-web, worldgen-worker-llm

# --- Logging: one JSON object a line (LOG_FORMAT=text for humans) -------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR"):
    raise SettingsError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {LOG_LEVEL!r}")
LOG_FORMAT = env_str("LOG_FORMAT", "json")
if LOG_FORMAT not in ("json", "text"):
    raise SettingsError(f"LOG_FORMAT must be json or text, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "worldgen_site.logs.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "filters": {"secrets": {"()": "worldgen_site.logs.MaskSecrets"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["secrets"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Drop Django's default handlers here: they print django.* records a second time, unmasked.
        "django": {"handlers": []},
        # axes: its lockouts and failures are warnings; its INFO lines repeat every login's steps.
        **{name: {"level": "WARNING"} for name in ("temporalio", "pymongo", "httpx", "httpcore", "axes")},
    },
}

# Debug pages hide settings (and request META, which holds os.environ under runserver)
# whose names look secret, and mask secret values wherever they appear.
DEFAULT_EXCEPTION_REPORTER_FILTER = "worldgen_site.logs.SecretSettingsFilter"
DEFAULT_EXCEPTION_REPORTER = "worldgen_site.logs.MaskingExceptionReporter"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 20,
    # Counted in the shared cache below, so every web process counts together. "generate" is the stricter
    # scope of the calls that start LLM work: generate, regenerate, resume and rerender.
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.UserRateThrottle",
        "rest_framework.throttling.ScopedRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": env_str("API_THROTTLE_RATE", "1200/minute"),
        "generate": env_str("API_GENERATE_THROTTLE_RATE", "30/minute"),
    },
}
# The cache that API throttles share across processes: a table in the SQL database (created by migration
# worlds/0010).
CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "worldgen_cache"}}

# --- Admin login lockouts (django-axes) ---------------------------------------------------------------------
# Failed logins count per username AND client address together: a stranger failing against a username from
# their address locks only that pair, never the real user on another address, and no address blocks everyone.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# Counted in the SQL database (axes' AccessAttempt table), so every web process counts together: each failure
# is one transaction that locks the pair's row (select_for_update) and adds 1 in SQL (F() + 1).
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURES_PER_USER", 5, minimum=1)
# The lockout lasts this long after the pair's last counted failure; refused attempts do not extend it.
AXES_COOLOFF_TIME = timedelta(seconds=env_int("ADMIN_LOGIN_WINDOW_SECONDS", 900, minimum=1))
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = True  # a successful login clears its username + address's failures
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_TEMPLATE = "admin/login_locked_out.html"
AXES_DISABLE_ACCESS_LOG = True  # no row per successful login (failures still are, until their cool-off ends)
# The client address: with TRUSTED_PROXY_COUNT = n proxies in front of the web process (each appending the
# address it was given to X-Forwarded-For, as nginx and the ingress controllers do), the n-th entry from the
# right; 0 = REMOTE_ADDR only, X-Forwarded-For is ignored. Set it to exactly the number of proxies: fewer
# counts every client as the proxy's address, more lets clients choose their address.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0, maximum=10)
AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR") if TRUSTED_PROXY_COUNT else ("REMOTE_ADDR",)
# django-ipware counts the proxies listed in X-Forwarded-For after the client: all but the last one, whose
# address is REMOTE_ADDR.
AXES_IPWARE_PROXY_COUNT = max(TRUSTED_PROXY_COUNT - 1, 0)
AXES_IPWARE_PROXY_ORDER = "left-most"
# ipware's "legacy" parser splits X-Forwarded-For on commas only and skips malformed entries (IPWARE_STRICT
# false), so the address is always the entry our proxies appended. The default parser honours quotes: a
# client's X-Forwarded-For ending in an unclosed quote swallows the appended entries and picks the address.
IPWARE_ALGORITHM = "legacy"
IPWARE_STRICT = False
# The API schema and its docs page need a staff login unless API_DOCS_PUBLIC is true.
API_DOCS_PUBLIC = env_bool("API_DOCS_PUBLIC", False)
SPECTACULAR_SETTINGS = {
    "TITLE": "worldgen API",
    "DESCRIPTION": "Define worlds, run their generation and read the generated content.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": [
        "rest_framework.permissions.AllowAny" if API_DOCS_PUBLIC else "rest_framework.permissions.IsAdminUser"
    ],
    # Swagger UI's assets are served from this app (no CDN needed).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Runs and regenerations both have a status field, with different choices.
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "worlds.models.GenerationRun.Status",
        "RegenerationStatusEnum": "worlds.models.Regeneration.Status",
        "LiveWorldStatusEnum": "worlds.models.LiveWorld.Status",
    },
}
