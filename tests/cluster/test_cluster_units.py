"""The pieces of shared mode that need no server: its configuration rules, the envelope a
result crosses instances in, a follower's mirror of a remote call, and the signature between
instances."""
from __future__ import annotations

import pytest

from gateway.calls.bus import BusMessage
from gateway.calls.cluster import (
    CallState, ClusterResultsBus, DirectoryEntry, MirrorState, envelope, message_from, message_json, open_envelope,
)
from gateway.calls.results import CleanSpeech, Status, VerificationResults, VerificationRow
from gateway.infra.config import ConfigError, load_settings

SHARED = {"VBGW_CLUSTER__MODE": "shared", "VBGW_STORAGE__DSN": "postgresql://u@db/vbgw",
          "VBGW_CLUSTER__REDIS_URL": "redis://r:6379/0", "VBGW_CLUSTER__SECRET": "s" * 32,
          "VBGW_AUTH__HASH_SECRET": "h" * 32}


def test_single_is_the_default_and_needs_nothing():
    s = load_settings(environ={})
    assert s.cluster.mode == "single" and not s.cluster.shared


@pytest.mark.parametrize("missing, named", [
    ("VBGW_STORAGE__DSN", "storage.dsn"), ("VBGW_CLUSTER__REDIS_URL", "cluster.redis_url"),
    ("VBGW_CLUSTER__SECRET", "cluster.secret"), ("VBGW_AUTH__HASH_SECRET", "auth.hash_secret")])
def test_shared_mode_names_what_it_lacks(missing, named):
    env = {k: v for k, v in SHARED.items() if k != missing}
    with pytest.raises(ConfigError) as err:
        load_settings(environ=env)
    assert named in str(err.value)


def test_shared_mode_secret_too_short_and_port_zero_are_refused():
    with pytest.raises(ConfigError, match="cluster.secret"):
        load_settings(environ={**SHARED, "VBGW_CLUSTER__SECRET": "short"})
    with pytest.raises(ConfigError, match="advertise_url"):
        load_settings(environ={**SHARED, "VBGW_SERVER__PORT": "0"})
    s = load_settings(environ={**SHARED, "VBGW_SERVER__PORT": "9000", "VBGW_CLUSTER__INSTANCE_ID": "gw-a"})
    assert s.cluster_instance_id == "gw-a" and s.cluster_url == "http://127.0.0.1:9000"


def test_a_result_crosses_instances_unchanged():
    row = VerificationRow(user_id="u", bio_user_id="u", bio_result="TRUE_HIGH", bio_score=0.9, llr=5.0,
                          speech_millis=5200, voiceprint_id=3, result_type="NORMAL")
    msg = BusMessage(VerificationResults("NORMAL", 2, (row,)), seq=7, ts=123.5)
    key, back, state = open_envelope(envelope(("t", "d", "a.x/1"), msg, CallState(1, None)))
    assert key == ("t", "d", "a.x/1") and back == msg and state == CallState(1, None)
    assert message_from(message_json(msg)) == msg


def _bus() -> ClusterResultsBus:
    return ClusterResultsBus("redis://127.0.0.1:1/0", "p", "me.1")


def test_local_calls_are_forwarded_and_remote_ones_mirrored_once():
    bus = _bus()
    mine, theirs = ("t", "d", "me.1/5"), ("t", "d", "other.2/5")
    bus.publish(mine, Status("CALL_OPENED"))
    assert len(bus._pending) == 1                   # for Redis: a local call only
    mirror = bus.mirrors[theirs] = MirrorState(DirectoryEntry("other", "http://o", theirs), "k")
    sub = bus.subscribe(theirs)
    starting = BusMessage(VerificationResults("STARTING", 1, (VerificationRow("u", "u", ""),)), 3)
    bus._deliver(theirs, starting, CallState(1, None))
    bus._deliver(theirs, starting, CallState(1, None))      # a replay after a reconnection
    bus._deliver(theirs, BusMessage(CleanSpeech(2000, False), 4), CallState(1, None))
    assert [m.seq for m in bus.recent(theirs)] == [3, 4] and sub.queue.qsize() == 2
    assert mirror.verification is not None and mirror.verification.users == ("u",) and mirror.streams == 1
    # this instance's own message on the mirrored call (INSTANCE_LOST) comes after the owner's
    lost = bus.publish(theirs, Status("SYSTEM_ERROR", "INSTANCE_LOST"))
    assert lost.seq == 5 and len(bus._pending) == 1


def test_the_signature_covers_path_and_body():
    from gateway.web.cluster import signature
    base = signature(b"k" * 32, "a", 100, "POST", "/enrol", b"{}")
    assert base != signature(b"k" * 32, "a", 100, "POST", "/enrol", b"{ }")
    assert base != signature(b"k" * 32, "a", 100, "POST", "/enrol?x=1", b"{}")
    assert base != signature(b"x" * 32, "a", 100, "POST", "/enrol", b"{}")
