"""Failed admin logins are limited per username and per client address, in the shared cache (every web
process counts together). Over the limit, the login page answers 429 and says when to try again; a
successful login clears the username's count."""

from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse


def _keys(request: HttpRequest) -> list[tuple[str, int]]:
    username = request.POST.get("username", "").strip().lower()[:150]
    address = request.META.get("REMOTE_ADDR", "")
    return [
        (f"login-failures:user:{username}", settings.ADMIN_LOGIN_FAILURES_PER_USER),
        (f"login-failures:address:{address}", settings.ADMIN_LOGIN_FAILURES_PER_ADDRESS),
    ]


def login_rate_limited(login_view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    def view(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method != "POST":
            return login_view(request, *args, **kwargs)
        keys = _keys(request)
        window = settings.ADMIN_LOGIN_WINDOW_SECONDS
        if any(cache.get(key, 0) >= limit for key, limit in keys):
            minutes = -(-window // 60)
            response = HttpResponse(
                f"Too many failed logins. Try again in {minutes} minutes.", status=429, content_type="text/plain"
            )
            response["Retry-After"] = str(window)
            return response
        response = login_view(request, *args, **kwargs)
        if response.status_code == 302:  # logged in
            cache.delete(keys[0][0])
        else:  # the form came back with an error; the window runs from the last failure
            for key, _ in keys:
                cache.set(key, cache.get(key, 0) + 1, timeout=window)
        return response

    return view
