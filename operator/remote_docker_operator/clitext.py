"""What both command lines say: their error, a status as one line, the API server's refusal.
Standard library only: `remote-docker` imports this in every CI pod."""

import json
from typing import Any, Protocol

Obj = dict[str, Any]


class CliError(Exception):
    """The command could not do what was asked; the message says why, for a person."""


class ApiFailure(Protocol):
    """An API error as the kubernetes client's ApiException and kubeapi.ApiError carry it."""

    status: int | None
    reason: str | None
    body: str | None


def progress(status: Obj) -> str:
    """One line saying where the BuildJob is: its phase, and why when the operator says."""
    phase = status.get("phase") or "Pending"
    reason = status.get("reason") if status.get("reason") != phase else None
    why = ": ".join(str(w) for w in (reason, status.get("message")) if w)
    return f"{phase} ({why})" if why else phase


def api_message(e: ApiFailure) -> str:
    """The API server's own words (an admission refusal names the field)."""
    try:
        return str(json.loads(e.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return f"{e.status} {e.reason}"
