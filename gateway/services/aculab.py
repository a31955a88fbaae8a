"""Aculab-style Voice Biometrics Users API (seed: aculab-vb-users-api.txt): the decisions.
gateway/web/aculab.py parses and renders; this module authenticates user group keys, checks
the audio against the seed's format rules and registers, updates, verifies and deletes users
through the same enrolment, verification and opt-out paths as the OCP API, on the same user
records (docs/aculab-users-api.md)."""
from __future__ import annotations

import base64
import binascii
import functools
import io
import math
import re
import secrets
import uuid
from dataclasses import dataclass

import numpy as np
import structlog

from connectors.codecs import ResamplableRates, soundfile_reason
from engine.fraud import unpack
from engine.passphrase import FEATURE_ID, ContentCalibration, PassphraseError, PassphraseModel, text_dependent_llr
from engine.types import Embedding
from gateway.services.auth import token_hash
from gateway.services.verification import NO_DATA_MS, Verifier, band_targets
from gateway.errors import ApiError
from engine import Engine
from gateway.infra.config import AculabConfig
from gateway.infra.fetch import FetchError, UrlFetcher
from gateway.infra.metrics import Metrics
from gateway.services.fraud import FraudService
from gateway.services.uploads import Uploads, seconds_text
from gateway.services.users import Users
from gateway.infra.clock import now_ms
from gateway.store.base import AculabCall, Profile, Repository, User, UserGroupKey

log = structlog.get_logger(__name__)

# The seed: "Characters a-z, A-Z, 0-9, "." and "-" can all be used." (OCP biokeys use another set.)
USER_ID_RE = re.compile(r"^[A-Za-z0-9.\-]{1,128}$")
USER_ID_CHARS_MESSAGE = "user_id may use only a-z A-Z 0-9 . - (1 to 128 characters)"
USER_GROUP_KEY_PREFIX = "ak-"
ORIGIN = "Aculab Users API"          # origin / verification_origin of the vb_* events
REGISTERED = ("ENROLLED", "RE_ENROLL")
MAX_AUDIO_S = 60.0
MAX_SOURCES = 10                     # bounds the CPU one request can take
# The seed's three encodings, as libsndfile names them, and deeper PCM (issue #16 item 5).
WAV_SUBTYPES = {"PCM_16": "16-bit PCM", "ALAW": "a-law", "ULAW": "mu-law", "PCM_24": "24-bit PCM",
                "PCM_32": "32-bit PCM"}
WAV_CONTAINERS = ("WAV", "WAVEX")      # WAVEX: WAVE_FORMAT_EXTENSIBLE, a WAV file like any other
ACULAB_RATES = ResamplableRates(8000, 192000)
SOURCE_GAP = np.zeros(8000, np.int16)  # 1 s between sources: no landmark pairs across files
MIN_CONFIDENCE_SPAN = 1.0            # llr units; guards a profile whose TRUE_HIGH == TRUE_LOW


def new_user_group_key() -> str:
    # The Aculab form (ak-<uuid>); uuid4 draws 122 bits from os.urandom.
    return USER_GROUP_KEY_PREFIX + str(uuid.uuid4())


def new_transaction_id() -> str:
    return uuid.uuid4().hex


def new_application_instance_id() -> str:
    return f"vb-{secrets.token_hex(10)}.000001"


@dataclass(frozen=True)
class KeyScope:
    """What an authenticated request reaches: one VB profile's users."""
    key: UserGroupKey
    profile: Profile


_AUTH_MESSAGE = ("HTTP Basic authentication is required: username cloudID/username, password a user "
                 "group key of that cloud ID")


async def authenticate(store: Repository, authorization: str) -> KeyScope:
    """HTTP Basic: `cloudID/username` and a user group key. The cloud ID is the key's tenant
    (name or id); the username is not checked (vbgw has no account users) and never logged.
    A wrong key and a key of another cloud ID get the same answer."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise ApiError(401, "UNAUTHORIZED", _AUTH_MESSAGE)
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(401, "UNAUTHORIZED", _AUTH_MESSAGE) from None
    username, colon, key = decoded.partition(":")
    cloud_id, slash, account = username.partition("/")
    if not (colon and slash and cloud_id and account and key):
        raise ApiError(401, "UNAUTHORIZED", _AUTH_MESSAGE)
    rec = await store.find_user_group_key(token_hash(key))
    tenant = await store.get_tenant(rec.tenant_id) if rec else None
    if rec is None or tenant is None or cloud_id not in (tenant.id, tenant.name):
        raise ApiError(401, "UNAUTHORIZED", "the user group key is not valid for this cloud ID")
    profile = await store.get_profile(rec.tenant_id, rec.profile_id)
    if profile is None:
        raise ApiError(401, "PROFILE_GONE", "the user group key's VB profile no longer exists")
    return KeyScope(rec, profile)


# -- audio -----------------------------------------------------------------------------------
def _check_wav_header(data: bytes) -> None:
    """The seed's format rules, from the header alone: mono WAV (a WAVE_FORMAT_EXTENSIBLE file
    is a WAV file too), 16-bit PCM, a-law or mu-law (deeper PCM is accepted: the document's
    only bit-depth error is "less than 16"), at least 8 kHz, at most 60 s."""
    import soundfile as sf
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - libsndfile raises RuntimeError/LibsndfileError for junk
        raise ApiError(415, "BAD_AUDIO", f"not a readable WAV file: {soundfile_reason(exc)}") from None
    if info.format not in WAV_CONTAINERS:
        raise ApiError(415, "BAD_AUDIO", f"expected a WAV file, got {info.format}")
    if info.channels != 1:
        raise ApiError(415, "NOT_MONO", f"the audio must be mono; this file has {info.channels} channels")
    if info.subtype not in WAV_SUBTYPES:
        raise ApiError(415, "UNSUPPORTED_ENCODING", f"the audio must be 16-bit PCM, a-law or mu-law; "
                                                    f"this file is {info.subtype_info}")
    if info.samplerate < 8000:
        raise ApiError(415, "BAD_SAMPLE_RATE", f"the sample rate must be at least 8000 Hz, not {info.samplerate}")
    if info.samplerate not in ACULAB_RATES:
        raise ApiError(415, "BAD_SAMPLE_RATE", f"a sample rate of {info.samplerate} Hz cannot be converted "
                                               f"exactly; use a whole multiple of 25 Hz up to {ACULAB_RATES.hi} Hz")
    if info.frames > MAX_AUDIO_S * info.samplerate:
        raise ApiError(415, "AUDIO_TOO_LONG", f"the audio must be at most {MAX_AUDIO_S:.0f} s long; "
                                              f"this file is {seconds_text(info.frames / info.samplerate)}")


async def analyse_source(engine: Engine, uploads: Uploads, data: bytes) -> tuple[np.ndarray, Embedding | None]:
    """A WAV source checked against the seed's rules, then decoded (int16 8 kHz mono) and
    embedded as file work, after live calls' (gateway/services/uploads.py)."""
    if not data:
        raise ApiError(400, "FILE_REQUIRED", "the request carries no audio")
    await engine.run_file_work(lambda: _check_wav_header(data))
    a = await uploads.analyse(data, max_s=MAX_AUDIO_S, keep_pcm=True, rates=ACULAB_RATES)
    return (a.pcm if a.pcm is not None else np.zeros(0, np.int16)), a.embedding     # kept: keep_pcm


UNNAMED = ""          # the one source of a PUT body or a WebSocket: the client named no part


@dataclass
class Source:
    """One audio source of a request: the part name (Source1, ...; UNNAMED for a PUT body or a
    WebSocket's file), and its audio if accepted."""
    name: str
    pcm: np.ndarray | None = None
    embedding: Embedding | None = None
    error: ApiError | None = None

    @property
    def accepted(self) -> bool:
        return self.embedding is not None


@dataclass
class Audio:
    """The accepted sources of a request as one voice sample."""
    sources: list[Source]
    embedding: Embedding
    pcm: np.ndarray            # accepted sources joined with 1 s gaps (fingerprint, TTS)


async def analyse(engine: Engine, uploads: Uploads, named: list[tuple[str, bytes]]) -> Audio:
    """Decode and embed each source; a source is accepted when it is usable audio with at
    least NO_DATA_MS of speech. No accepted source: the first source's error (or LOW_DATA)."""
    sources = [Source(name) for name, _ in named]
    for src, (_, data) in zip(sources, named):
        try:
            src.pcm, emb = await analyse_source(engine, uploads, data)
        except ApiError as exc:
            src.error = exc
            continue
        if emb is not None and emb.speech_ms >= NO_DATA_MS:
            src.embedding = emb
        else:
            prefix = f"{src.name}: " if src.name != UNNAMED else ""
            src.error = ApiError(422, "LOW_DATA", f"{prefix}no usable speech ({emb.speech_ms if emb else 0} ms)")
    accepted = [s for s in sources if s.accepted]
    if not accepted:
        raise next(s.error for s in sources if s.error is not None)
    embs = [s.embedding for s in accepted if s.embedding is not None]      # all of them: accepted
    emb = embs[0]
    for e in embs[1:]:
        # speech-weighted mean, like a voiceprint update
        emb = engine.merge(emb.vector, emb.speech_ms, e)
    parts = [p for s in accepted if s.pcm is not None for p in (s.pcm, SOURCE_GAP)][:-1]
    return Audio(sources, emb, np.concatenate(parts))


# -- confidence ------------------------------------------------------------------------------
def confidence(llr: float, pass_llr: float, high_llr: float) -> tuple[bool, float]:
    """(verified, confidence). Confidence is 1.0 at the pass threshold and 2.0 at the
    TRUE_HIGH threshold, doubling every (high - pass) llr above (halving below)."""
    span = max(high_llr - pass_llr, MIN_CONFIDENCE_SPAN)
    verified = llr >= pass_llr
    value = round(math.pow(2.0, (llr - pass_llr) / span), 3)
    if not verified and value >= 1.0:
        value = 0.999          # rounding must not make a failed verification read as passed
    return verified, value


# -- speech minimums (issue #16 item 1) -------------------------------------------------------
INSUFFICIENT_SPEECH = "Insufficient speaker observations in the audio source"


class InsufficientSpeech(ApiError):
    """Too little speech to analyse, as Aculab's published Voice Biometrics errors answer it:
    engine error 422 "Insufficient speaker observations in the audio source" (an engine code,
    so without the "HTTP " prefix) carried by HTTP 400 (`http_status`); on the one-time
    WebSocket, reject code 52 ("Audio does not contain sufficient speech"). `status` stays
    422, the engine's code, so whatever maps a status to a WebSocket code keeps 422 -> 52.
    vbgw_code LOW_DATA."""
    engine_code = "422"
    http_status = 400
    ws_code = 52

    def __init__(self, message: str):
        super().__init__(422, "LOW_DATA", f"{INSUFFICIENT_SPEECH}: {message}")


@dataclass(frozen=True)
class SpeechMinimums:
    """Least net speech (ms) each action accepts for one user group key."""
    register_ms: int
    update_ms: int
    verify_ms: int


def speech_minimums(key: UserGroupKey, defaults: AculabConfig) -> SpeechMinimums:
    """The key's own minimums where it has them, else the gateway's `[aculab]` defaults."""
    own = key.settings
    return SpeechMinimums(
        own.register_min_speech_ms if own.register_min_speech_ms is not None else defaults.register_min_speech_ms,
        own.update_min_speech_ms if own.update_min_speech_ms is not None else defaults.update_min_speech_ms,
        own.verify_min_speech_ms if own.verify_min_speech_ms is not None else defaults.verify_min_speech_ms)


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.2f} s"


def insufficient(action: str, have_ms: int, need_ms: int) -> InsufficientSpeech:
    return InsufficientSpeech(f"{action} needs at least {_seconds(need_ms)} of speech; the audio has "
                              f"{_seconds(have_ms)}")


async def analyse_for(engine: Engine, uploads: Uploads, named: list[tuple[str, bytes]], action: str,
                      need_ms: int) -> Audio:
    """`analyse`, with too little speech answered as the document's error: no source with
    usable speech, or less speech in all accepted sources than the action's minimum."""
    try:
        audio = await analyse(engine, uploads, named)
    except ApiError as exc:
        if exc.code == "LOW_DATA":
            raise InsufficientSpeech(exc.message) from None
        raise
    if audio.embedding.speech_ms < need_ms:
        raise insufficient(action, audio.embedding.speech_ms, need_ms)
    return audio


# -- text-dependent verification (issue #16 item 2, docs/passphrase.md) --------------------
@functools.lru_cache(maxsize=1)
def content_calibration() -> ContentCalibration:
    """engine/data/calibration-passphrase.json, read once."""
    return ContentCalibration.load()


def no_passphrase(user_id: str) -> ApiError:
    return ApiError(409, "NO_PASSPHRASE", f"user_id '{user_id}' has no registered passphrase for text dependent "
                                          "verification (registered before vbgw kept passphrases, or through the "
                                          "OCP API); call update with the passphrase, or verify with "
                                          "text_dependent=false")


async def phrase_templates(engine: Engine, audio: Audio, stored: bytes | None) -> bytes | None:
    """The user's passphrase templates after adding each accepted source of `audio` (register:
    `stored` None; update: the stored ones, or a fresh model when they are of another feature
    version). None when no source has a phrase and nothing was stored."""
    model = PassphraseModel()
    if stored is not None:
        try:
            model = PassphraseModel.from_bytes(stored)
        except PassphraseError:
            model = PassphraseModel()
        if model.feature_id != FEATURE_ID:
            model = PassphraseModel()          # other features: this update registers the phrase anew
    added = 0
    for src in audio.sources:
        if src.accepted and src.pcm is not None:
            feats = await engine.run_file_work(functools.partial(engine.phrase_features, src.pcm))
            if feats is not None:
                model.add(feats)
                added += 1
    if not added and stored is None:
        return None
    return model.to_bytes()


@dataclass(frozen=True)
class PhraseCheck:
    """The content llr of a verification attempt against the user's registered passphrase."""
    llr: float
    cost: float


async def check_phrase(engine: Engine, stored: bytes, pcm: np.ndarray, user_id: str) -> PhraseCheck:
    """Align the attempt against the registered utterances (engine.passphrase); no phrase in
    the attempt is the document's insufficient-speech error, unusable templates need an update."""
    try:
        model = PassphraseModel.from_bytes(stored)
    except PassphraseError:
        raise no_passphrase(user_id) from None
    feats = await engine.run_file_work(lambda: engine.phrase_features(pcm))
    if feats is None:
        raise InsufficientSpeech("the audio has no spoken phrase to compare with the registered one")
    cal = content_calibration()
    try:
        cs = await engine.run_file_work(lambda: model.score(feats, cal))
    except PassphraseError:
        raise no_passphrase(user_id) from None
    return PhraseCheck(cs.llr, cs.cost)


def text_dependent_confidence(voice_llr: float, phrase: PhraseCheck, pass_llr: float, high_llr: float,
                              sensitivity: float) -> tuple[bool, float]:
    """(verified, confidence) of voice AND phrase: the smaller of the two margins on the voice
    scale (engine.passphrase.text_dependent_llr), so confidence = min(voice confidence,
    content confidence) and verified = the voice passes and the phrase passes. `pass_llr` and
    `high_llr` are the voice's TRUE_LOW and TRUE_HIGH; the sensitivity moves them and the
    content's thresholds by the same llr units."""
    cal = content_calibration()
    p, h = pass_llr + sensitivity, high_llr + sensitivity
    td = text_dependent_llr(voice_llr, phrase.llr, p, max(h - p, MIN_CONFIDENCE_SPAN),
                            cal.pass_llr + sensitivity, cal.high_llr - cal.pass_llr)
    return confidence(td, p, h)


# -- wav_file_url (issue #16 item 3, docs/url-sources.md) ----------------------------------
def fetchable_url(url: str) -> str:
    """The URL to fetch for a `wav_file_url` as given: the document's examples name no scheme
    (`my.wav.files.com/get_wav?filename=bob123.wav`), so one without a scheme is fetched over
    https; the `source` reported stays the string as supplied."""
    return url if "://" in url else "https://" + url


def check_urls(fetcher: UrlFetcher, urls: list[str]) -> None:
    """Refuse before any download or audio work: the allow-list, scheme, port, IP literals."""
    for url in urls:
        try:
            fetcher.check_url(fetchable_url(url))
        except FetchError as exc:
            raise download_error(exc) from None


def download_error(exc: FetchError) -> ApiError:
    """Aculab's published error for a failed download is 400 "Exception downloading audio";
    vbgw_code is the fetcher's stable code (docs/url-sources.md), the text says why, naming the
    host, never the URL (it may carry a pre-signed query)."""
    return ApiError(400, exc.code, f"Exception downloading audio: {exc.message}")


async def fetch_sources(fetcher: UrlFetcher, urls: list[str]) -> list[tuple[str, bytes]]:
    """Download each `wav_file_url` (one at a time: each may be fetcher.max_bytes); the source
    name is the URL as supplied. Any failed download fails the request (nothing analysed)."""
    check_urls(fetcher, urls)
    out: list[tuple[str, bytes]] = []
    for url in urls:
        try:
            got = await fetcher.fetch(fetchable_url(url))
        except FetchError as exc:
            raise download_error(exc) from None
        out.append((url, got.body))
    return out


# -- the API's actions -----------------------------------------------------------------------
def _not_found(user_id: str) -> ApiError:
    return ApiError(400, "USER_NOT_FOUND", f"user_id '{user_id}' not found")


def _opted_out(user_id: str) -> ApiError:
    return ApiError(409, "USER_OPTED_OUT", f"user_id '{user_id}' opted out; registering again needs the user's "
                                           "explicit consent: register with opt_in=true")


def _not_registered(user_id: str) -> ApiError:
    return ApiError(404, "NOT_REGISTERED", f"user Id {user_id} is not a registered user.")


class AculabUsers:
    def __init__(self, store: Repository, engine: Engine, uploads: Uploads, users: Users, verifier: Verifier,
                 fraud: FraudService, metrics: Metrics, keep_verify_fingerprints: int,
                 verify_fingerprint_retention_s: float = 90 * 86400.0, aculab_cfg: AculabConfig | None = None):
        self.aculab_cfg = aculab_cfg or AculabConfig()
        self.store = store
        self.engine = engine
        self.uploads = uploads
        self.users = users
        self.verifier = verifier
        self.fraud = fraud
        self.metrics = metrics
        self.keep_verify_fingerprints = keep_verify_fingerprints
        self.verify_fingerprint_max_age_ms = int(verify_fingerprint_retention_s * 1000)

    async def registered_user(self, profile: Profile, user_id: str) -> User | None:
        user = await self.store.get_user(profile.id, user_id)
        return user if user is not None and user.status in REGISTERED else None

    async def register(self, scope: KeyScope, user_id: str, named: list[tuple[str, bytes]],
                       instance_id: str, opt_in: bool = False) -> Audio:
        """A new user from the audio. The consent rule is the OCP API's, one for every API
        (gateway/services/users.py `_refuse_opted_out`): a user who opted out (OCP opt-out or
        an Aculab delete) is registered again only with explicit consent, `opt_in=true` here
        (OCP: `"opt_in": true` or POST /users/optin); without it, 409 USER_OPTED_OUT."""
        if await self.registered_user(scope.profile, user_id) is not None:
            raise ApiError(400, "USER_EXISTS", f"user_id '{user_id}' is already present")
        existing = await self.store.get_user(scope.profile.id, user_id)
        if existing is not None and existing.status == "OPTED_OUT" and not opt_in:
            raise _opted_out(user_id)           # before the audio's analysis: no CPU for a refusal
        need = self.minimums(scope).register_ms
        audio = await analyse_for(self.engine, self.uploads, named, "register", need)
        fp = await self.uploads.fingerprint(audio.pcm)
        # The passphrase templates are always kept: register has no text_dependent parameter,
        # and verify's default is text dependent (docs/passphrase.md).
        phrase = await phrase_templates(self.engine, audio, None)
        try:
            await self._enrol(scope, user_id, audio, instance_id, fp, need, phrase, "register",
                              opt_in=opt_in, require_new=True)
        except ApiError as exc:
            if exc.code == "USER_OPTED_OUT":       # opted out while the audio was analysed
                raise _opted_out(user_id) from None
            raise
        return audio

    def minimums(self, scope: KeyScope) -> SpeechMinimums:
        return speech_minimums(scope.key, self.aculab_cfg)

    async def _enrol(self, scope: KeyScope, user_id: str, audio: Audio, instance_id: str, fp: bytes | None,
                     need: int, phrase: bytes | None, action: str, **kw) -> None:
        """The one enrolment path (gateway/services/users.py) with this key's minimum; its
        low-data refusal (and vb_enrolment failure event) answered as the document's error."""
        try:
            await self.users.enrol_embedding(scope.profile, user_id, {}, audio.embedding, instance_id, fp,
                                            origin=ORIGIN, min_speech_ms=need, passphrase=phrase, **kw)
        except ApiError as exc:
            if exc.code == "LOW_DATA":
                raise insufficient(action, audio.embedding.speech_ms, need) from None
            raise

    async def update(self, scope: KeyScope, user_id: str, named: list[tuple[str, bytes]],
                     instance_id: str) -> Audio:
        if await self.registered_user(scope.profile, user_id) is None:
            raise _not_found(user_id)
        need = self.minimums(scope).update_ms
        audio = await analyse_for(self.engine, self.uploads, named, "update", need)
        fp = await self.uploads.fingerprint(audio.pcm)
        phrase = await phrase_templates(self.engine, audio, await self.store.passphrase(scope.profile.id, user_id))
        try:
            await self._enrol(scope, user_id, audio, instance_id, fp, need, phrase, "update")
        except ApiError as exc:
            if exc.code == "USER_OPTED_OUT":       # deleted while the audio was analysed
                raise _not_found(user_id) from None
            raise
        return audio

    async def verify(self, scope: KeyScope, user_id: str, named: list[tuple[str, bytes]], instance_id: str,
                     sensitivity: float, enable_pad: bool,
                     text_dependent: bool = False) -> tuple[Audio, bool, float, dict | None]:
        """(audio, verified, confidence, pad_detected). The audio's fingerprint is kept as a
        VERIFY fingerprint of the user whatever the outcome, so sending it again is TypeA.
        `text_dependent`: the voice AND the registered passphrase (text_dependent_confidence);
        else the voice alone."""
        profile = scope.profile
        user = await self.registered_user(profile, user_id)
        if user is None:
            raise _not_found(user_id)
        if user.status == "RE_ENROLL":
            raise ApiError(409, "RE_ENROLL", f"user_id '{user_id}' was registered with another speaker model; "
                                             "call update with new audio first")
        stored_phrase = await self.store.passphrase(profile.id, user_id) if text_dependent else None
        if text_dependent and stored_phrase is None:
            raise no_passphrase(user_id)
        need = self.minimums(scope).verify_ms
        audio = await analyse_for(self.engine, self.uploads, named, "verify", need)
        r = (await self.verifier.score(profile, audio.embedding, [user_id], None, min_speech_ms=need))[0]
        if r.voiceprint_id is None:
            if r.error_type in ("NO_SPEECH", "NOT_ENOUGH_SPEECH"):
                raise insufficient("verify", audio.embedding.speech_ms, need)
            raise _not_found(user_id)              # deleted or re-modelled meanwhile
        th = self.engine.thresholds(band_targets(profile))
        if stored_phrase is not None:
            phrase = await check_phrase(self.engine, stored_phrase, audio.pcm, user_id)
            verified, conf = text_dependent_confidence(r.llr, phrase, th["TRUE_LOW"], th["TRUE_HIGH"], sensitivity)
        else:
            # Sensitivity moves both thresholds by that many llr units (natural log): +1 asks for
            # e times more evidence that it is the same speaker.
            verified, conf = confidence(r.llr, th["TRUE_LOW"] + sensitivity, th["TRUE_HIGH"] + sensitivity)
        fp = await self.uploads.fingerprint(audio.pcm)
        pad = await self._pad(profile, user_id, fp, audio.pcm) if enable_pad else None
        if fp is not None:
            await self.store.add_fingerprint(profile.id, user_id, "VERIFY", instance_id, fp,
                                             keep_verify=self.keep_verify_fingerprints,
                                             max_age_ms=self.verify_fingerprint_max_age_ms)
        await self.store.record_verification(profile.id, user_id, verified)
        await self.verifier.events.verification(profile, instance_id, 1, r, audio.embedding, None, origin=ORIGIN)
        self.metrics.inc("vbgw_verifications_total", result=r.bio_result)
        if pad is not None:
            log.warning("pad_detected", pad_type=pad["type"], profile_id=profile.id, dialog_id=instance_id)
        return audio, verified, conf, pad

    async def _pad(self, profile: Profile, user_id: str, fp: bytes | None, pcm: np.ndarray) -> dict | None:
        """engine.fraud.pad_detected for an uploaded file: its landmarks against the user's
        stored enrolment/verification fingerprints (TypeA/TypeB) and the TTS detector (TypeC)."""
        fraud, detector = self.fraud, self.fraud.tts
        tts = await self.engine.run_file_work(lambda: detector.score_pcm(pcm)) if detector is not None else None

        return await fraud.pad_for(profile.id, user_id, lambda: unpack(fp) if fp is not None else None, tts)

    async def delete(self, scope: KeyScope, user_id: str, instance_id: str) -> User:
        """Like OCP opt-out: voiceprints, biokeys, fingerprints and counts go in one transaction."""
        if await self.registered_user(scope.profile, user_id) is None:
            raise _not_registered(user_id)
        user = await self.users.opt_out(scope.profile, user_id, instance_id)
        if user is None:                                  # deleted by another request meanwhile
            raise _not_registered(user_id)
        return user


# -- charging: application_status (issue #16 item 6) -----------------------------------------
@dataclass(frozen=True)
class CallCost:
    """What `application_status` answers for one application_instance_id."""
    instance_id: str
    cost: float                # US dollars (Aculab's cost unit)
    costs_valid: bool


class AculabCosts:
    """The price table (`aculab_costs` in the config: US dollars per register, update and
    verify call) applied to each call that returned an application_instance_id, kept in the
    repository (`aculab_calls`) so a cost survives a restart and reaches every instance.

    A PUT/POST call is recorded DONE with its price when it answers 200 (an error answer carries
    no application_instance_id to ask about). A GET's WebSocket URL is recorded ISSUED with no
    cost (`costs_valid: false`), STARTED when its socket opens, and DONE when the socket answers:
    the price for a register/update/verify event, 0 for a reject. A URL never used costs 0, and
    that is valid once the URL has expired."""

    def __init__(self, store: Repository, prices: dict[str, float], keep_s: float, url_ttl_s: float):
        self.store = store
        self.micros = {action: int(round(price * 1_000_000)) for action, price in prices.items()}
        self.keep_ms = int(keep_s * 1000)
        self.url_ttl_ms = int(url_ttl_s * 1000)

    async def charged(self, scope: KeyScope, instance_id: str, action: str) -> None:
        await self.store.add_aculab_call(AculabCall(instance_id, scope.profile.id, action, "DONE",
                                                    self.micros.get(action, 0), now_ms()), self.keep_ms)

    async def issued(self, scope: KeyScope, instance_id: str, action: str) -> None:
        await self.store.add_aculab_call(AculabCall(instance_id, scope.profile.id, action, "ISSUED", 0, now_ms()),
                                         self.keep_ms)

    async def started(self, instance_id: str) -> None:
        await self.store.update_aculab_call(instance_id, "STARTED", 0)

    async def finished(self, instance_id: str, action: str, answered: bool) -> None:
        """The socket's call is over: `answered` (its event) costs the price, a reject nothing."""
        await self.store.update_aculab_call(instance_id, "DONE", self.micros.get(action, 0) if answered else 0)

    async def status(self, scope: KeyScope, instance_id: str) -> CallCost:
        call = await self.store.get_aculab_call(scope.profile.id, instance_id)
        if call is None:
            raise ApiError(404, "NOT_FOUND", f"application_instance_id {instance_id[:80]} is not a call of this "
                                             "user group key (or its cost is no longer kept)")
        if call.status == "ISSUED" and now_ms() - call.created_ms > self.url_ttl_ms:
            return CallCost(instance_id, 0.0, True)            # a WebSocket URL never used
        return CallCost(instance_id, call.cost_micros / 1_000_000, call.status == "DONE")
