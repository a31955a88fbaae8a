"""structlog set-up. Loggers are bound with dialog_id and a token *fingerprint* (never the
token itself); audio, voiceprints, biokey values and secrets are never logged.

Every line on stderr is one JSON object (with format "json"): structlog's own events, and
through `structlog.stdlib.ProcessorFormatter` on the root handler everything that libraries log
with the standard `logging` module (aiohttp's server/access/web_protocol loggers, Engine.IO and
Socket.IO, asyncio's "Task exception was never retrieved"), warnings, and uncaught exceptions
in any thread. A traceback is a field of its line (`exception`), never lines of its own.

Redaction, last before rendering: values of secret-named keys are replaced, and in every
string (messages, URLs, request lines quoted by aiohttp's parser errors, tracebacks) `token=`
query values, Authorization/X-API-KEY header values, bearer credentials and PATs are."""
from __future__ import annotations

import hashlib
import logging
import re
import sys
import threading

import structlog

_REDACT = {"token", "authorization", "secret", "pat", "biokeys", "value", "client_secret",
           "hash_secret", "webhook_secret", "password", "x-api-key", "api_key"}
REDACTED = "[redacted]"
_SECRETS_IN_TEXT = (
    # ?token=... and &auth_token=... in URLs and request lines (also URL-encoded `=`)
    (re.compile(r"(token(?:=|%3[dD]))[^&\s\"'#;,)\]}]+", re.I), r"\1" + REDACTED),
    # header dumps: "Authorization: Bearer x", "'authorization': 'Basic x'", "X-API-KEY=x"
    (re.compile(r"((?:authorization|x-api-key|cookie)['\"]?\s*[:=]\s*['\"]?)[^\r\n'\",}]+", re.I),
     r"\1" + REDACTED),
    (re.compile(r"\b(bearer|basic)(\s+:?\s*)[A-Za-z0-9._~+/=-]{8,}", re.I), r"\1\2" + REDACTED),
    (re.compile(r"vbgw_pat_[A-Za-z0-9_-]+"), "vbgw_pat_" + REDACTED),
)


def token_ref(token: str) -> str:
    """A stable, non-reversible reference to a bearer token for logs."""
    return "tok_" + hashlib.sha256(token.encode()).hexdigest()[:10]


def redact_text(text: str) -> str:
    """`text` with credentials in URLs and header dumps replaced by [redacted]."""
    for pattern, repl in _SECRETS_IN_TEXT:
        text = pattern.sub(repl, text)
    return text


def _redact(_logger, _name, event_dict):
    for key in list(event_dict):
        if key.lower() in _REDACT:
            event_dict[key] = REDACTED
        elif isinstance(event_dict[key], str):
            event_dict[key] = redact_text(event_dict[key])
    return event_dict


class _ClientErrorFilter(logging.Filter):
    """aiohttp logs a request its parser refused (a request line over 8190 bytes, too many or
    too large headers, not HTTP at all), and python-engineio a packet that is not acceptable
    JSON, as an ERROR with a traceback. That is the client's mistake, answered already: one info
    line with the reason is enough (and an attacker cannot fill the log with tracebacks)."""

    def __init__(self, event: str, client_errors: tuple[type[BaseException], ...]):
        super().__init__()
        self.event, self.client_errors = event, client_errors

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, self.client_errors):
            record.msg, record.args = self.event, ()
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.reason = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"[:300]
            record.exc_info = record.exc_text = None
            return logging.getLogger().isEnabledFor(logging.INFO)
        return True


def _record_fields(_logger, _name, event_dict):
    """Carry the extra fields of a standard-library record (e.g. `reason` above)."""
    record = event_dict.get("_record")
    if record is not None and hasattr(record, "reason"):
        event_dict.setdefault("reason", record.reason)
    return event_dict


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test's capture, a redirected stream)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    lvl = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # The standard library's records, rendered by the same processors.
    handler = _StderrHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           structlog.processors.TimeStamper(fmt="iso", utc=True), _record_fields],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, _redact, renderer]))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(lvl)
    from aiohttp.http_exceptions import HttpProcessingError
    # python-socketio decodes a client's packet in its message handler: a ValueError there is a
    # malformed packet (bad type digit, JSON refused by connectors.safejson).
    for name, event, errors in (("aiohttp.server", "bad_http_request", (HttpProcessingError,)),
                                ("engineio.server", "bad_socketio_packet", (ValueError,))):
        lib = logging.getLogger(name)
        if not any(isinstance(f, _ClientErrorFilter) for f in lib.filters):
            lib.addFilter(_ClientErrorFilter(event, errors))
    # aiohttp's access log would print every URL: keep it off (tokens are redacted anyway).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    for name in ("socketio.server", "engineio.server"):
        lib = logging.getLogger(name)
        lib.handlers = []               # python-socketio adds a plain-text handler of its own
        lib.setLevel(max(lvl, logging.ERROR))
        lib.propagate = True
    logging.captureWarnings(True)
    if fmt == "json":
        fault = structlog.get_logger("vbgw.uncaught")
        sys.excepthook = lambda t, e, tb: fault.critical("uncaught_exception", exc_info=(t, e, tb))
        threading.excepthook = lambda a: fault.error("uncaught_thread_exception", thread=getattr(a.thread, "name", None),
                                                     exc_info=(a.exc_type, a.exc_value, a.exc_traceback))


def library_logger(name: str) -> logging.Logger:
    """A standard-library logger for python-socketio/engineio: given explicitly, they add no
    plain-text handler of their own; errors only unless configured otherwise."""
    lib = logging.getLogger(name)
    if lib.level == logging.NOTSET:
        lib.setLevel(logging.ERROR)
    return lib
