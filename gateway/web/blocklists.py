"""Blocklists (fraudster voice lists) of a group: admin REST with a personal access token.

A PAT belongs to one group; it reaches only that group's lists (another group's list looks
exactly like one that does not exist). Every bio-enabled call of the group is checked against
all its active lists (gateway/services/fraud.py); docs/fraud-signals.md describes the whole feature."""
from __future__ import annotations

import re
from typing import Annotated
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import ApiError, bad_request, not_found
from gateway.services.blocklists import add_entry, add_entry_from_file
from gateway.services.wiring import Services
from gateway.store.base import Blocklist, BlocklistEntry, Conflict, Pat, RiskLevel
from gateway.web.appkeys import SERVICES, SETTINGS
from gateway.web.forms import form_parts
from gateway.web.http_auth import pat as request_pat
from gateway.web.routing import RouteTable, json_response, parse_json

log = structlog.get_logger(__name__)
routes = RouteTable()

Name = Annotated[str, Field(min_length=1, max_length=128)]
Text = Annotated[str, Field(max_length=1000)]
_LABEL_RE = re.compile(r"^[^\x00-\x1f]{1,128}$")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class BlocklistCreate(_In):
    name: Name
    description: Text = ""
    risk_level: RiskLevel = "HIGH_RISK"
    custom_ui_message: Text = "blocklisted"
    custom_agent_message: Text = "Blocklisted voice has been detected"
    active: bool = True


class BlocklistUpdate(_In):
    name: Name | None = None
    description: Text | None = None
    risk_level: RiskLevel | None = None
    custom_ui_message: Text | None = None
    custom_agent_message: Text | None = None
    active: bool | None = None


class FromDialog(_In):
    dialog_id: str = Field(min_length=1, max_length=256, description="The past call's masterId (still retained)")
    label: str = Field(default="", max_length=128)


class EntryOut(BaseModel):
    id: int
    label: str
    source: str
    speech_ms: int
    model: str
    created_ms: int


class BlocklistOut(BaseModel):
    id: str
    name: str
    description: str
    group: str
    risk_level: RiskLevel
    custom_ui_message: str
    custom_agent_message: str
    active: bool
    entries: int
    created_ms: int
    updated_ms: int


class BlocklistDetail(BlocklistOut):
    fraudsters: list[EntryOut]


class BlocklistList(BaseModel):
    blocklists: list[BlocklistOut]


class Deleted(BaseModel):
    deleted: bool


def _out(b: Blocklist) -> BlocklistOut:
    return BlocklistOut(id=b.id, name=b.name, description=b.description, group=b.group_id,
                        risk_level=b.risk_level, custom_ui_message=b.custom_ui_message,
                        custom_agent_message=b.custom_agent_message, active=b.active, entries=b.entries,
                        created_ms=b.created_ms, updated_ms=b.updated_ms)


def _entry(e: BlocklistEntry) -> EntryOut:
    return EntryOut(id=e.id, label=e.label, source=e.source, speech_ms=e.speech_ms, model=e.model,
                    created_ms=e.created_ms)


def _core(request: web.Request) -> Services:
    return request.app[SERVICES]


async def _pat(request: web.Request) -> Pat:
    return await request_pat(request)


async def _list_or_404(core: Services, pat: Pat, blocklist_id: str) -> Blocklist:
    bl = await core.store.get_blocklist(pat.group_id, blocklist_id)
    if bl is None:
        raise not_found("BLOCKLIST_NOT_FOUND", "no such blocklist in this token's group")
    return bl


def _label(raw: str, default: str) -> str:
    label = (raw or "").strip() or default
    if not _LABEL_RE.match(label):
        raise bad_request("BAD_LABEL", "label: 1 to 128 printable characters")
    return label


@routes.route("POST", "/api/blocklists", summary="Create a blocklist in the token's group", auth="pat",
              body=BlocklistCreate, response=BlocklistOut, tags=("blocklists",))
async def create_blocklist(request: web.Request) -> web.Response:
    core = _core(request)
    pat = await _pat(request)
    body = await parse_json(request, BlocklistCreate, request.app[SETTINGS].server.max_json_bytes)
    try:
        bl = await core.store.create_blocklist(Blocklist(
            "", pat.tenant_id, pat.group_id, body.name, body.description, body.risk_level, body.custom_ui_message,
            body.custom_agent_message, body.active, 0, 0))
    except Conflict as exc:
        raise ApiError(409, "BLOCKLIST_EXISTS", str(exc)) from None
    log.info("blocklist_created", blocklist_id=bl.id)
    return json_response(_out(bl), status=201)


@routes.route("GET", "/api/blocklists", summary="The token's group's blocklists", auth="pat",
              response=BlocklistList, tags=("blocklists",))
async def list_blocklists(request: web.Request) -> web.Response:
    pat = await _pat(request)
    lists = await _core(request).store.list_blocklists(pat.group_id)
    return json_response(BlocklistList(blocklists=[_out(b) for b in lists]))


@routes.route("GET", "/api/blocklists/{id}", summary="A blocklist and its fraudster entries (no voiceprints)",
              auth="pat", response=BlocklistDetail, tags=("blocklists",))
async def get_blocklist(request: web.Request) -> web.Response:
    core = _core(request)
    pat = await _pat(request)
    bl = await _list_or_404(core, pat, request.match_info["id"])
    entries = await core.store.blocklist_entries(pat.group_id, bl.id)
    return json_response(BlocklistDetail(**_out(bl).model_dump(), fraudsters=[_entry(e) for e in entries]))


@routes.route("PATCH", "/api/blocklists/{id}", summary="Change name, description, risk level, messages, "
              "or (de)activate", auth="pat", body=BlocklistUpdate, response=BlocklistOut, tags=("blocklists",))
async def update_blocklist(request: web.Request) -> web.Response:
    core = _core(request)
    pat = await _pat(request)
    body = await parse_json(request, BlocklistUpdate, request.app[SETTINGS].server.max_json_bytes)
    changes = body.model_dump(exclude_none=True)
    if not changes:
        raise bad_request("NOTHING_TO_CHANGE", "give at least one field to change")
    try:
        bl = await core.store.update_blocklist(pat.group_id, request.match_info["id"], changes)
    except Conflict as exc:
        raise ApiError(409, "BLOCKLIST_EXISTS", str(exc)) from None
    if bl is None:
        raise not_found("BLOCKLIST_NOT_FOUND", "no such blocklist in this token's group")
    log.info("blocklist_updated", blocklist_id=bl.id, fields=sorted(changes))
    return json_response(_out(bl))


@routes.route("DELETE", "/api/blocklists/{id}", summary="Delete a blocklist and its voiceprints", auth="pat",
              response=Deleted, tags=("blocklists",))
async def delete_blocklist(request: web.Request) -> web.Response:
    core = _core(request)
    pat = await _pat(request)
    if not await core.store.delete_blocklist(pat.group_id, request.match_info["id"]):
        raise not_found("BLOCKLIST_NOT_FOUND", "no such blocklist in this token's group")
    return json_response(Deleted(deleted=True))


@routes.route("POST", "/api/blocklists/{id}/fraudsters", summary="Add a fraudster voiceprint from a WAV file",
              auth="pat", response=EntryOut, tags=("blocklists",),
              form={"file": "WAV recording of the fraudster (>= 3 s of speech)", "label": "Optional label"})
async def add_from_wav(request: web.Request) -> web.Response:
    core = _core(request)
    pat = await _pat(request)
    bl = await _list_or_404(core, pat, request.match_info["id"])
    if not request.content_type.startswith("multipart/"):
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send multipart/form-data with a file field")
    audio, filename, label = None, "", ""
    async for part in form_parts(request):
        if part.name == "file":
            filename = part.filename or "upload.wav"
            audio = await part.read()
        elif part.name == "label":
            label = (await part.text()).strip()
        else:
            raise bad_request("UNKNOWN_FIELD", f"unexpected form field {part.name!r} (use file and label)")
    if not audio:
        raise bad_request("FILE_REQUIRED", "a non-empty file field is required")
    name = re.sub(r"[^0-9A-Za-z._+\-]", "_", filename)[-100:]
    label = _label(label, name)
    # decoded and embedded block by block, after live calls' work (gateway/services/uploads.py)
    entry = await add_entry_from_file(core.uploads, core.store, pat.group_id, bl.id, audio, label, f"wav:{name}")
    log.info("blocklist_entry_added", blocklist_id=bl.id, entry_id=entry.id, speech_ms=entry.speech_ms)
    return json_response(_entry(entry), status=201)


@routes.route("POST", "/api/blocklists/{id}/fraudsters/from-dialog", summary="Add the customer voice of a "
              "past call (while it is retained) as a fraudster", auth="pat", body=FromDialog, response=EntryOut,
              tags=("blocklists",))
async def add_from_dialog(request: web.Request) -> web.Response:
    core = _core(request)
    pat = await _pat(request)
    bl = await _list_or_404(core, pat, request.match_info["id"])
    body = await parse_json(request, FromDialog, request.app[SETTINGS].server.max_json_bytes)
    # The call as this group's profiles own it (another group's dialog on that id looks absent);
    # of several, the one that carried the most customer audio.
    dialog = max(core.dialogs.of_group(pat.tenant_id, body.dialog_id, pat.group_id),
                 key=lambda d: d.samples_in, default=None)
    if dialog is None:
        raise not_found("DIALOG_NOT_FOUND", "no retained call with that dialog id in this token's group "
                                            f"(calls are kept {core.settings.dialogs.retain_after_close_s:.0f} s "
                                            "after they end)")
    entry = await add_entry(core.store, pat.group_id, bl.id, await dialog.engine_session.embedding(),
                            _label(body.label, body.dialog_id), f"dialog:{body.dialog_id}", what="the call")
    log.info("blocklist_entry_added", blocklist_id=bl.id, entry_id=entry.id, dialog_id=body.dialog_id)
    return json_response(_entry(entry), status=201)


@routes.route("DELETE", "/api/blocklists/{id}/fraudsters/{entry}", summary="Remove a fraudster entry",
              auth="pat", response=Deleted, tags=("blocklists",))
async def delete_entry(request: web.Request) -> web.Response:
    core = _core(request)
    pat = await _pat(request)
    try:
        entry_id = int(request.match_info["entry"])
    except ValueError:
        raise bad_request("BAD_ENTRY_ID", "fraudster entry ids are integers") from None
    if not await core.store.delete_blocklist_entry(pat.group_id, request.match_info["id"], entry_id):
        raise not_found("ENTRY_NOT_FOUND", "no such fraudster entry in this blocklist")
    return json_response(Deleted(deleted=True))
