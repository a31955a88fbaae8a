"""multipart/form-data for every upload endpoint (OCP batch enrolment, Aculab Source1..N,
blocklist WAV uploads): one reader whose failures are client errors with a stable code.

aiohttp's MultipartReader reports malformed input as whatever is at hand (ValueError for a
missing boundary or a body cut short, AssertionError, RuntimeError for an unknown encoding,
BadHttpMessage for too many part headers) and yields a nested MultipartReader, which has no
`name`, for a multipart part. Here all of that is 400 MALFORMED_MULTIPART; a body over the size
limit and a body deadline keep their own answers (413, 408: gateway.errors.client_error)."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.errors import ApiError

MAX_PARTS = 64
_MALFORMED = (ValueError, AssertionError, RuntimeError, TypeError, LookupError, HttpProcessingError)


def malformed(message: str) -> ApiError:
    return ApiError(400, "MALFORMED_MULTIPART", message)


@contextmanager
def _client_errors(what: str) -> Iterator[None]:
    try:
        yield
    except _MALFORMED as exc:
        reason = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
        raise malformed(f"{what}: {reason[:200] or type(exc).__name__}") from None


class FormPart:
    """One part of a form: its field name and file name, and its content read safely."""

    def __init__(self, part: BodyPartReader):
        self._part = part
        with _client_errors("a part's Content-Disposition is malformed"):
            self.name: str = part.name or ""
            self.filename: str = part.filename or ""

    async def read(self) -> bytes:
        with _client_errors(f"part {self.name[:40]!r} could not be read"):
            return bytes(await self._part.read(decode=False))

    async def text(self) -> str:
        """The part as UTF-8 text (form fields)."""
        data = await self.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise malformed(f"form field {self.name[:40]!r} is not UTF-8 text") from None


async def form_parts(request: web.Request, max_parts: int = MAX_PARTS) -> AsyncIterator[FormPart]:
    """The parts of a multipart/form-data body, in order. Nested multipart parts and more than
    max_parts parts are refused."""
    with _client_errors("the multipart body is malformed (a boundary parameter is required)"):
        reader = await request.multipart()
    count = 0
    while True:
        with _client_errors("the multipart body is malformed"):
            part = await reader.next()
        if part is None:
            return
        if isinstance(part, MultipartReader):
            raise malformed("nested multipart parts are not accepted")
        count += 1
        if count > max_parts:
            raise malformed(f"at most {max_parts} parts per form")
        yield FormPart(part)
