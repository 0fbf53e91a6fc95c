"""The object store tier against a real S3 API server (moto's server mode on a free port).

With `storage.backend: s3` the store is the durable tier: any replica serves any URL after Redis
forgets it, a missing bucket stops the server, an unreachable store keeps it unready, and an
outage of the store degrades /tts to what Redis holds, never to a 500 or a hang.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT, MotoProcess, query, s3_env, unique_text

BUCKET = "tts-audio"


def wait_for(predicate, timeout: float = 30, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(step)


def object_bytes(moto: MotoProcess, name: str) -> bytes | None:
    client = moto.client()
    try:
        return client.get_object(Bucket=BUCKET, Key=name)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


@pytest.fixture
def bucket(moto_server: MotoProcess) -> MotoProcess:
    moto_server.create_bucket(BUCKET)
    return moto_server


def test_tts_stores_the_wav_in_the_bucket_as_prefix_plus_entry_name(bucket, make_server):
    proc = make_server(s3_env(bucket, BUCKET))
    body = proc.get("/tts?" + query(text=unique_text("Into the bucket"))).json()
    wav = proc.get(body["audio_path"]).body
    assert object_bytes(bucket, f"audio/{body['hash']}.wav") == wav
    assert proc.get("/readyz").json()["store"] == "ok"


def test_a_replica_serves_another_replicas_url_from_the_store_after_redis_forgets_it(
    bucket, make_server, make_redis
):
    redis = make_redis()
    env = s3_env(bucket, BUCKET, TTS__REDIS__URL=redis.url)
    first, second = make_server(env), make_server(env)
    body = first.get("/tts?" + query(text=unique_text("Outlives Redis"))).json()
    wav = first.get(body["audio_path"]).body
    redis.client().flushall()  # expiry, eviction or a restart without persistence

    served = second.get(body["audio_path"])

    assert (served.status, served.headers["X-Cache"]) == (200, "s3")
    assert served.body == wav


def test_with_redis_down_a_url_minted_on_one_replica_is_served_by_another_from_the_store(
    bucket, make_server, make_redis
):
    redis = make_redis()
    env = s3_env(bucket, BUCKET, TTS__REDIS__URL=redis.url)
    first, second = make_server(env), make_server(env)
    redis.stop()

    made = first.get("/tts?" + query(text=unique_text("Minted while Redis is out")))
    served = second.get(made.json()["audio_path"])

    assert made.status == 200
    assert (served.status, served.headers["X-Cache"]) == (200, "s3")
    assert served.body == first.get(made.json()["audio_path"]).body


def test_presigned_urls_fetch_the_wav_straight_from_the_store_until_expires_at(bucket, make_server):
    proc = make_server(s3_env(bucket, BUCKET, TTS__S3__PRESIGN_S="600"))
    before = time.time()
    body = proc.get("/tts?" + query(text=unique_text("Presigned"))).json()
    assert body["audio_url"].startswith(f"{bucket.url}/{BUCKET}/audio/{body['hash']}.wav?")
    expires = time.mktime(time.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before + 599 <= expires <= time.time() + 601
    with urllib.request.urlopen(body["audio_url"], timeout=30) as fetched:
        assert fetched.read() == proc.get(body["audio_path"]).body


def test_public_base_url_makes_audio_urls_on_that_base(bucket, make_server):
    proc = make_server(s3_env(bucket, BUCKET, TTS__S3__PUBLIC_BASE_URL="https://cdn.example.com/tts/"))
    body = proc.get("/tts?" + query(text=unique_text("Through a CDN"))).json()
    assert body["audio_url"] == f"https://cdn.example.com/tts/audio/{body['hash']}.wav"
    assert "expires_at" not in body


def test_reuse_refreshes_the_objects_age_at_most_once_per_interval(bucket, make_server):
    proc = make_server(s3_env(bucket, BUCKET, TTS__S3__REFRESH_INTERVAL_S="1"))
    path = "/tts?" + query(text=unique_text("Refreshed"))
    key = f"audio/{proc.get(path).json()['hash']}.wav"
    first = bucket.client().head_object(Bucket=BUCKET, Key=key)["LastModified"]
    time.sleep(2.2)  # LastModified has one-second resolution
    assert proc.get(path).json()["cache"] == "l1"
    wait_for(lambda: bucket.client().head_object(Bucket=BUCKET, Key=key)["LastModified"] > first)


def start_failing(tmp_path, env: dict[str, str]) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TTS")}
    base.update(
        {
            "TTS_CONFIG": str(ROOT / "config.yaml"),
            "TTS__SERVER__PORT": "1",
            "TTS__STORAGE__DIR": str(tmp_path / "audio"),
            "TTS__SYNTHESIS__MODELS_DIR": str(tmp_path),
            **env,
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "server"], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120
    )
    return done.returncode, done.stderr.strip()


def test_a_missing_bucket_stops_the_server_naming_bucket_and_endpoint(moto_server, tmp_path):
    code, err = start_failing(tmp_path, s3_env(moto_server, "no-such-bucket"))
    assert code == 2
    assert err == f"object store: bucket 'no-such-bucket' at {moto_server.url} does not exist"


def test_a_bucket_that_denies_access_stops_the_server_naming_bucket_and_endpoint(tmp_path):
    # moto enforces IAM after its first two calls (its own start-up listing and the bucket's
    # creation); the dummy credentials are unknown to it then, as a wrong key would be on AWS.
    moto = MotoProcess(tmp_path / "moto", env={"INITIAL_NO_AUTH_ACTION_COUNT": "2"}).start()
    try:
        moto.create_bucket(BUCKET)
        code, err = start_failing(tmp_path, s3_env(moto, BUCKET))
    finally:
        moto.stop()
    assert code == 2
    assert err == f"object store: bucket '{BUCKET}' at {moto.url} denies access"


def test_an_unreachable_store_keeps_the_worker_unready_until_it_answers(make_server, tmp_path):
    moto = MotoProcess(tmp_path / "late-moto")  # its port, nothing listening yet
    proc = make_server(s3_env(moto, BUCKET), wait_ready=False)

    def unready_with_store_degraded() -> bool:
        try:
            ready = proc.get("/readyz", timeout=5)
        except OSError:
            return False  # not listening yet
        return ready.status == 503 and ready.json()["store"] == "degraded"

    wait_for(unready_with_store_degraded, timeout=90)
    assert proc.proc is not None and proc.proc.poll() is None  # retrying, not exited
    moto.start()
    try:
        moto.create_bucket(BUCKET)
        proc.wait_ready(timeout=90)  # the backoff retries find it
        assert proc.get("/readyz").json()["store"] == "ok"
    finally:
        moto.stop()


def test_during_a_store_outage_tts_is_200_from_redis_else_503_and_the_journal_catches_up(
    bucket, make_server, make_redis
):
    redis = make_redis()
    proc = make_server(s3_env(bucket, BUCKET, TTS__REDIS__URL=redis.url, TTS__REDIS__PROBE_INTERVAL_S="0.5"))
    bucket.stop()

    # Within the store's timeout (1 s here) plus synthesis: a bound on a hang, not a speed target.
    started = time.monotonic()
    held = proc.get("/tts?" + query(text=unique_text("Redis holds it")))
    assert held.status == 200
    assert time.monotonic() - started < 10
    ready = proc.get("/readyz").json()
    assert (ready["store"], ready["degraded"]) == ("degraded", ["store"])

    redis.stop()
    started = time.monotonic()
    lost = proc.get("/tts?" + query(text=unique_text("Nowhere shared")))
    assert lost.status == 503
    assert time.monotonic() - started < 10
    assert lost.json()["error"]["code"] == "storage_unavailable"
    assert lost.headers["Retry-After"] == "5"

    bucket.start()  # same port; moto keeps nothing, so the bucket is made again
    bucket.create_bucket(BUCKET)
    name = f"audio/{held.json()['hash']}.wav"
    wait_for(lambda: object_bytes(bucket, name) is not None, timeout=60)
    assert object_bytes(bucket, name) == proc.get(held.json()["audio_path"]).body
