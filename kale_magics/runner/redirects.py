"""Which HTTP redirects are followed by the requests kale-magics makes itself with urllib.

urllib's redirect handler sends every header of a request on to the redirect's target,
whatever server that is: ``HTTPRedirectHandler.redirect_request`` copies all headers but
``Content-Length`` and ``Content-Type`` (CPython ``Lib/urllib/request.py``). A KFP host that
redirects to another server (a login page, a misconfigured or hostile proxy) would so receive
the KFP token and cookies meant for it. The openers here therefore follow a redirect only to
the same origin (scheme, host name and port: the server the credentials were configured
for), or none at all; a redirect they refuse comes back as an ``HTTPError`` with its 3xx code
and ``Location`` header, for the caller to explain.

``kfp.Client``'s own calls go through urllib3, which drops ``Authorization`` and ``Cookie``
itself on a redirect to another host (urllib3 2.x ``Retry.DEFAULT_REMOVE_HEADERS_ON_REDIRECT``).
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from typing import Any, Optional

#: Default port of each scheme, so ``http://kfp`` and ``http://kfp:80`` are one origin.
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, Optional[int]]:
    """``(scheme, host name, port)`` of ``url``, lower-cased, the port defaulted by scheme
    (None for a port that is no number or an unknown scheme without one)."""
    parts = urllib.parse.urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme)


def same_origin(a: str, b: str) -> bool:
    """True when URLs ``a`` and ``b`` have one origin (``http://KFP:80/x`` and ``http://kfp`` do;
    ``http://kfp`` and ``https://kfp`` do not)."""
    return origin(a) == origin(b)


def origin_text(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, for messages (no path, query or user name)."""
    scheme, host, port = origin(url)
    shown = "" if port == DEFAULT_PORTS.get(scheme) or port is None else f":{port}"
    return f"{scheme}://{host}{shown}"


class SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only within the origin of the request that got it (each hop is
    checked against the one before, so a chain never leaves the first origin)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> Optional[urllib.request.Request]:
        if not same_origin(req.full_url, urllib.parse.urljoin(req.full_url, newurl)):
            return None  # the 3xx becomes an HTTPError
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class NoRedirects(urllib.request.HTTPRedirectHandler):
    """Follow no redirect (a gRPC-Web POST has nothing to gain from one)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx becomes an HTTPError


#: Opens requests following same-origin redirects only (``OPENER_SAME_ORIGIN.open(request,
#: timeout=...)``, as ``urllib.request.urlopen``).
OPENER_SAME_ORIGIN = urllib.request.build_opener(SameOriginRedirects)
#: Opens requests following no redirect.
OPENER_NO_REDIRECTS = urllib.request.build_opener(NoRedirects)


def location(error: Any) -> str:
    """The origin a refused redirect (an ``HTTPError`` with a 3xx code) pointed to, or ""."""
    headers = getattr(error, "headers", None)
    target = headers.get("Location", "") if headers is not None else ""
    return origin_text(urllib.parse.urljoin(getattr(error, "filename", "") or "", target)) if target else ""
