"""NICE CXone business units allowed to stream over the CAAE audio relay: their API keys and
`vbgw nice add-bu`.

Each business unit gets one random API key (256 bits, hex: nothing in it needs quoting in the
CAAE app's header field or a URL). It is only ever compared, so the database keeps its SHA-256
alone (as AudioHook API keys: gateway/services/audiohook_orgs.py); `add-bu` prints it once, and
it is never logged."""
from __future__ import annotations

import re
import secrets
import sys
import time

from gateway.services.audiohook_orgs import api_key_hash, owner_of
from gateway.store.base import NiceBusinessUnit, Repository

BU_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

__all__ = ["BU_ID", "add_bu", "api_key_hash", "print_instructions"]


async def add_bu(store: Repository, bu_id: str, tenant: str | None, profile: str | None,
                 rotate: bool = False) -> tuple[NiceBusinessUnit, str]:
    """Issue the business unit's API key (Conflict if it has one and not `rotate`). The tenant
    is made if missing (default: one named `nice-<bu id>`, or the unit's own when rotating);
    the profile must exist in it."""
    existing = await store.get_nice_bu(bu_id)
    t, profile_id = await owner_of(store, tenant, profile, existing.tenant_id if existing else None, f"nice-{bu_id}")
    if profile_id is None and not profile and existing is not None and existing.tenant_id == t.id:
        profile_id = existing.profile_id           # a rotation keeps the unit's default profile
    api_key = secrets.token_hex(32)
    bu = NiceBusinessUnit(bu_id, t.id, profile_id, api_key_hash(api_key), int(time.time() * 1000))
    await store.save_nice_bu(bu, replace=rotate)
    return bu, api_key


def print_instructions(bu: NiceBusinessUnit, tenant_name: str, profile_name: str | None, api_key: str,
                       endpoint: str, header: str, panel_url: str, out=None) -> None:
    """What the CXone admin pastes into the Custom Agent Assist Endpoint app; the last three
    lines are `endpoint=`, `header=` and `api_key=` for scripts."""
    p = lambda s="": print(s, file=out or sys.stdout)  # noqa: E731
    p(f"NICE CXone business unit {bu.bu_id} -> tenant {tenant_name} ({bu.tenant_id}), "
      f"default VB profile: {profile_name or '(none: set vbProfile in the script parameters)'}")
    p()
    p("In CXone: Agent Assist Hub > + > Custom Agent Assist Endpoint (CAAE) app:")
    p(f"  Audio Relay Endpoint:  {endpoint}")
    p(f"  Headers:               {header} = the api_key value below")
    p("                         (or Authorization = Bearer <api_key>, or append ?token=<api_key> to the endpoint)")
    p("  Participants:          Both  (TX = the contact is scored; RX = the agent is kept apart)")
    p(f"  App URL (agent panel): {panel_url}?params={{scriptparams}}")
    p("In Studio, after ONANSWER: a Script Parameters snippet with at least customPayload.Ani=\"{ani}\" (the")
    p("caller's number: the fallback user id) and, for the panel, customPayload.vbgwToken = the token a")
    p("REST API action got from POST /api/token/ (masterId = {ContactID}); then the AGENT ASSIST action")
    p("with scriptParams = customPayloadJSON.")
    p("This API key is shown once; the gateway keeps only its hash.")
    p()
    p(f"endpoint={endpoint}")
    p(f"header={header}")
    p(f"api_key={api_key}")
