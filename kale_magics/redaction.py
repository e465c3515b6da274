"""Redaction of credentials written into URLs: the one function every message goes through.

A URL may carry a user name and password (``http://alice:Sup3rS3cret@host``,
RFC 3986 "userinfo"). kale-magics never shows them: :func:`redact_urls` is
applied to every :class:`~kale_magics.errors.KaleError` message, to the
runners' log records and to links, so a password typed into ``--host``,
``$KF_PIPELINES_ENDPOINT``, the config file or ``--pip-index-url`` never
reaches a terminal, a log or the status model.
"""

from __future__ import annotations

import re

#: ``scheme://userinfo@``: the userinfo runs to the LAST ``@`` before the path, query,
#: fragment or white space (browsers and urllib split there, so a raw ``@`` in a
#: password is covered), and may be empty (``http://@host``).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s@]*(?:@[^/?#\s@]*)*@")

#: What replaces the userinfo.
MASK = "***@"


def redact_urls(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***``.

    Parameters
    ----------
    text:
        Any text: a message, a log line, a URL.

    Returns
    -------
    str
        ``"cannot reach http://***@127.0.0.1:9"`` for ``"cannot reach
        http://alice:pw@127.0.0.1:9"``; text without such URLs is returned unchanged.
    """
    if "@" not in text or "://" not in text:
        return text
    return _USERINFO.sub(lambda m: m.group("scheme") + MASK, text)
