"""The NICE tests' gateway: a short resume window (hold/resume and the end after it are seen in
seconds) and a short delay before a refused upgrade's 401."""
from __future__ import annotations

import pytest

from support import gateway_settings


@pytest.fixture
def settings(tmp_path):
    return gateway_settings(tmp_path, nice={"resume_idle_s": 3.0, "auth_failure_delay_s": 0.05})
