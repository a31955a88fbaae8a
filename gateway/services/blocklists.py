"""Blocklists (fraudster voice lists): the vocabulary every surface shares (risk levels, verdict
labels) and adding a fraudster voiceprint, for the REST API (gateway/web/blocklists.py) and the
command line (gateway/cli/blocklist.py) alike. Live checking: gateway/services/fraud.py."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gateway.errors import ApiError, not_found
from gateway.store.base import BlocklistEntry, Repository

if TYPE_CHECKING:
    from engine.types import Embedding
    from gateway.services.uploads import Uploads

MATCH = "MATCH"
NO_MATCH = "NO_MATCH"
# risk_level of a row that is not a MATCH: the list found nothing, whatever its own level, so a
# UI that reads risk_level alone cannot raise an alarm on it (docs/fraud-signals.md).
NO_RISK = "NO_RISK"
MIN_ENTRY_SPEECH_MS = 3000          # a fraudster voiceprint needs at least this much speech


async def add_entry(store: Repository, group_id: str, blocklist_id: str, emb: "Embedding | None", label: str,
                    source: str, what: str = "the recording") -> BlocklistEntry:
    """Store a fraudster voiceprint (an engine Embedding, or None without speech)."""
    have = emb.speech_ms if emb is not None else 0
    if emb is None or have < MIN_ENTRY_SPEECH_MS:
        raise ApiError(422, "LOW_DATA", f"a blocklist voiceprint needs {MIN_ENTRY_SPEECH_MS} ms of speech; "
                                        f"{what} has {have} ms")
    entry = await store.add_blocklist_entry(group_id, blocklist_id, label, source,
                                            np.asarray(emb.vector, np.float32).tobytes(), emb.speech_ms, emb.model)
    if entry is None:
        raise not_found("BLOCKLIST_NOT_FOUND", "no such blocklist in this token's group")
    return entry


async def add_entry_from_file(uploads: "Uploads", store: Repository, group_id: str, blocklist_id: str, data: bytes,
                              label: str, source: str, max_s: float | None = None) -> BlocklistEntry:
    """A fraudster recording (a WAV file) decoded and embedded as file work, block by block,
    after live calls' work (gateway/services/uploads.py), then added to a list. `max_s`: the
    longest recording taken (None: uploads.max_audio_s)."""
    emb = (await uploads.analyse(data, max_s=max_s)).embedding
    return await add_entry(store, group_id, blocklist_id, emb, label, source)
