"""The NICE tests' gateway: a short resume window (hold/resume and the end after it are seen in
seconds) and a short delay before a refused upgrade's 401."""
from __future__ import annotations

import pytest


@pytest.fixture
def settings(tmp_path):
    from gateway.infra.config import load_settings
    return load_settings(environ={}, overrides={
        "server": {"data_dir": str(tmp_path / "var"), "port": 0, "shutdown_grace_s": 1},
        "events": {"jsonl_path": str(tmp_path / "var" / "events.jsonl")},
        "dialogs": {"retain_after_close_s": 600},
        "nice": {"resume_idle_s": 3.0, "auth_failure_delay_s": 0.05},
    })
