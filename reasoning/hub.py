"""Failures to fetch from the Hugging Face Hub: one message shape, and whether a retry can help.

Design: every place that downloads (checkpoints, datasets, teacher trace files) turns a failure into
a `HubError` that says what could not be fetched, the exact local alternative for the setting that
named it, and the command that downloads it where the Hub is reachable, since every `source:` also
takes a local path. `offline` marks failures a retry cannot fix (HF_HUB_OFFLINE=1, or a host name
that does not resolve: no network at all), so the pipeline does not spend minutes retrying them.
"""

from __future__ import annotations

import os
import socket


class HubError(RuntimeError):
    """Something could not be fetched from the Hugging Face Hub; `offline`: retrying cannot help."""

    def __init__(self, what: str, setting: str, local: str, command: str, cause: BaseException):
        reason = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        self.offline = is_offline(cause)
        where = "the Hub is not reachable from here (offline)" if self.offline else "the download failed"
        super().__init__(f"could not fetch {what} from the Hugging Face Hub: {where} ({reason}). Use a local "
                         f"copy instead: set {setting}: {local}, after downloading it where the Hub is "
                         f"reachable with `{command}`")


_NO_RESOLUTION = ("Name or service not known", "Temporary failure in name resolution", "nodename nor servname",
                  "Failed to resolve", "getaddrinfo failed", "offline mode is enabled", "HF_HUB_OFFLINE")


def is_offline(exc: BaseException) -> bool:
    """True when the failure means no network at all: HF_HUB_OFFLINE is set, or a host name did not
    resolve (anywhere in the exception's cause chain)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, socket.gaierror) or any(s in str(e) for s in _NO_RESOLUTION):
            return True
        e = e.__cause__ or e.__context__
    return False
