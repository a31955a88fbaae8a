"""structlog set-up. Loggers are bound with dialog_id and a token *fingerprint* (never the
token itself); audio, voiceprints, biokey values and secrets are never logged."""
from __future__ import annotations

import hashlib
import logging
import sys

import structlog

_REDACT = {"token", "authorization", "secret", "pat", "biokeys", "value", "client_secret",
           "hash_secret", "webhook_secret", "password"}


def token_ref(token: str) -> str:
    """A stable, non-reversible reference to a bearer token for logs."""
    return "tok_" + hashlib.sha256(token.encode()).hexdigest()[:10]


def _redact(_logger, _name, event_dict):
    for key in list(event_dict):
        if key.lower() in _REDACT:
            event_dict[key] = "[redacted]"
    return event_dict


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # aiohttp's access log would print query strings, which carry tokens: keep it off.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
