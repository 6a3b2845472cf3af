"""The Temporal codec server: ``POST /temporal-codec/decode`` and ``/encode``, so the Temporal UI and
CLI show encrypted payloads (``clients/codec.py``) in clear to staff allowed to see runs.

Protocol: the body is a Temporal ``Payloads`` message as protobuf JSON (``{"payloads": [{"metadata":
{...}, "data": "<base64>"}]}``); the answer is the same shape; a malformed body or a payload that
does not decrypt is a 400 with the reason.

Who: an active staff user with ``worlds.view_generationrun`` decodes (Editors and Reviewers);
encoding (payloads the workers will trust) takes ``worlds.start_run`` (Editors). Two ways in:

- ``Authorization: Token <key>`` (or ``Bearer <key>``), a DRF token: for the CLI
  (``temporal workflow show --codec-endpoint URL --codec-auth 'Token <key>'``). Not a cookie, so no CSRF.
- The admin's session cookie, for the UI in the browser ("include cross-origin credentials" in
  its codec settings). The UI sends no CSRF token, so instead the request's ``Origin`` must be the
  Temporal UI's (from ``TEMPORAL_UI_URL``): another site cannot use a signed-in browser, and only
  that origin gets CORS headers. No ``TEMPORAL_UI_URL``, no session access.
"""

import logging
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from google.protobuf import json_format
from rest_framework.authtoken.models import Token
from temporalio.api.common.v1 import Payloads

from clients.codec import PayloadDecryptionError, payload_codec

log = logging.getLogger(__name__)

PERMISSIONS = {"decode": "worlds.view_generationrun", "encode": "worlds.start_run"}
BODY_FORM = '{"payloads": [{"metadata": {"encoding": "<base64>"}, "data": "<base64>"}]}'


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def ui_origin() -> str | None:
    """The Temporal UI's origin (scheme://host:port), the only one allowed cross-origin."""
    parts = urlsplit(settings.TEMPORAL_UI_URL or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


@csrf_exempt  # session requests are checked by Origin instead (module docstring)
def codec(request: HttpRequest, operation: str) -> HttpResponse:
    origin = request.headers.get("Origin")
    allowed = origin is not None and origin == ui_origin()
    if request.method == "OPTIONS":  # CORS preflight
        response = HttpResponse(status=204 if allowed else 403)
    else:
        try:
            response = JsonResponse(_run(request, operation))
        except Refused as exc:
            response = JsonResponse({"error": str(exc)}, status=exc.status)
            if exc.status == 401:
                response["WWW-Authenticate"] = "Token"
    if allowed:
        response["Access-Control-Allow-Origin"] = origin
        response["Access-Control-Allow-Credentials"] = "true"
        response["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response["Access-Control-Allow-Headers"] = "Content-Type, Authorization, X-Namespace"
        response["Access-Control-Max-Age"] = "600"
    response["Vary"] = "Origin"
    response["Cache-Control"] = "no-store"
    return response


def _run(request: HttpRequest, operation: str) -> dict:
    if request.method != "POST":
        raise Refused(405, f"use POST /temporal-codec/{operation}")
    user = _user(request)
    if not (user.is_active and user.is_staff and user.has_perm(PERMISSIONS[operation])):
        raise Refused(403, f"{operation} needs a staff user with the {PERMISSIONS[operation]} permission")
    codec = payload_codec(settings.TEMPORAL_PAYLOAD_KEYS)
    if codec is None:
        raise Refused(404, "payload encryption is off: TEMPORAL_PAYLOAD_KEYS is not set")
    try:
        payloads = json_format.Parse(request.body, Payloads())
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise Refused(400, f"the body must be Temporal Payloads as protobuf JSON, {BODY_FORM}: {exc}") from None
    step = codec.decrypt if operation == "decode" else codec.encrypt
    try:
        done = Payloads(payloads=[step(payload) for payload in payloads.payloads])
    except PayloadDecryptionError as exc:
        raise Refused(400, str(exc)) from None
    log.info(
        "temporal codec", extra={"operation": operation, "user": user.get_username(), "payloads": len(done.payloads)}
    )
    return json_format.MessageToDict(done, always_print_fields_with_no_presence=True)


def _user(request: HttpRequest):
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, key = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not key.strip():
            raise Refused(401, "the Authorization header must be 'Token <key>' or 'Bearer <key>'")
        token = Token.objects.select_related("user").filter(key=key.strip()).first()
        if token is None:
            raise Refused(401, "unknown token")
        return token.user
    if not request.user.is_authenticated:
        raise Refused(401, "sign in to the admin, or send 'Authorization: Token <key>'")
    if ui_origin() is None or request.headers.get("Origin") != ui_origin():
        raise Refused(
            403,
            "a session may call the codec only from the Temporal UI (TEMPORAL_UI_URL's origin); send a token instead",
        )
    return request.user
