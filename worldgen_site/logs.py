"""Structured logs (one JSON object per line, with any ``extra=`` fields kept),
and secrets kept out of log lines and Django's debug pages."""

import base64
import functools
import html
import json
import logging
import re
from urllib.parse import quote, unquote, urlsplit

from django.conf import settings  # at import: a log line from inside the workflow sandbox must import nothing
from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
MASK = "***"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


@functools.lru_cache(maxsize=8)
def _secret_values(mongo_uri: str, db_password: str, llm_base_url: str, *keys: str) -> tuple[str, ...]:
    llm = urlsplit(llm_base_url)
    raw = [urlsplit(mongo_uri).password, db_password, llm.netloc.rpartition("@")[0], llm.username, llm.password, *keys]
    values = {form for value in raw if value for form in (value, unquote(value), quote(value, safe=""))}
    # Longest first, so "user:pass" goes before "pass"; short values would mask ordinary words.
    return tuple(sorted((v for v in values if len(v) >= 4), key=len, reverse=True))


def secret_values() -> tuple[str, ...]:
    """The configured secrets: passwords in MONGO_URI and DATABASE_URL, userinfo in
    LLM_BASE_URL, LLM_API_KEY, TEMPORAL_API_KEY, SECRET_KEY and the TEMPORAL_PAYLOAD_KEYS."""
    if not settings.configured:
        return ()
    return _secret_values(
        getattr(settings, "MONGO_URI", ""),
        settings.DATABASES.get("default", {}).get("PASSWORD") or "",
        getattr(settings, "LLM_BASE_URL", ""),
        getattr(settings, "LLM_API_KEY", ""),
        getattr(settings, "TEMPORAL_API_KEY", ""),
        settings.SECRET_KEY,
        *(base64.b64encode(key).decode() for key in getattr(settings, "TEMPORAL_PAYLOAD_KEYS", {}).values()),
    )


def mask(text: str, secrets: tuple[str, ...] | None = None) -> str:
    for secret in secret_values() if secrets is None else secrets:
        text = text.replace(secret, MASK)
    return text


class MaskSecrets(logging.Filter):
    """Replaces secret values with ``***`` in the message, ``extra`` fields and exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the raw text
            message = f"{record.msg} {record.args}"
        record.msg, record.args = mask(message), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and not key.startswith("_") and (masked := mask(str(value))) != str(value):
                setattr(record, key, masked)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        return True


class SecretSettingsFilter(SafeExceptionReporterFilter):
    """Also hides settings and request META entries named like URLs (MONGO_URI, LLM_BASE_URL, ...)."""

    hidden_settings = re.compile(SafeExceptionReporterFilter.hidden_settings.pattern + "|URI|URL|DSN", flags=re.I)


class MaskingExceptionReporter(ExceptionReporter):
    """Masks secret values anywhere on the debug page: frame locals, exception messages."""

    def get_traceback_html(self) -> str:
        secrets = {form for s in secret_values() for form in (s, html.escape(s))}
        return mask(super().get_traceback_html(), tuple(sorted(secrets, key=len, reverse=True)))

    def get_traceback_text(self) -> str:
        return mask(super().get_traceback_text())
