"""Alert webhooks: one JSON POST per alert, never fatal to training."""

from __future__ import annotations

import http.client
import json
import os
import urllib.request

from rich import get_console

from grpokit.errors import ConfigError


def webhook_url(url: str | None, url_env: str | None) -> str | None:
    """The configured URL, else the one in the environment variable named ``url_env``.

    >>> webhook_url("http://localhost:9/hook", None), webhook_url(None, None)
    ('http://localhost:9/hook', None)
    """
    if url or not url_env:
        return url
    if url_env not in os.environ:
        raise ConfigError(f"monitor.webhook_url_env names {url_env!r}, which is not set in the "
                         "environment; set it to the webhook URL or remove the key")
    return os.environ[url_env]


def post_json(url: str, payload: dict, timeout: float) -> str | None:
    """POST ``payload`` as JSON; returns None on a 2xx answer, else what went wrong."""
    try:
        request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except (OSError, ValueError, http.client.HTTPException) as error:  # URLError, timeouts, bad URLs
        return f"{type(error).__name__}: {error}"
    return None


def send_alert(url: str, alert: dict, timeout: float) -> bool:
    """POST the alert JSON (plus a ``text`` line, which Slack-style webhooks display); a failure
    is printed and training goes on."""
    text = f"grpokit alert {alert['rule']} at step {alert['step']}: {alert['message']}"
    error = post_json(url, {**alert, "text": text}, timeout)
    if error:
        get_console().print(f"[yellow]alert webhook failed[/] ({error}); training continues",
                            highlight=False, soft_wrap=True)
    return error is None
