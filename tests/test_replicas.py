"""Replicas share nothing but Redis: URLs work on any replica, and one inference serves all."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import query, unique_text

PARAGRAPH = (
    "Replicas behind a load balancer share one Redis. "
    "When two of them get the same new text at the same moment, only one should synthesize it. "
    "The other waits for the result to appear in the shared cache. "
    "Then both answer with the same audio."
)


@pytest.fixture
def replicas(make_server, make_redis):
    redis = make_redis()
    first = make_server({"TTS__REDIS__URL": redis.url})
    second = make_server({"TTS__REDIS__URL": redis.url})
    return redis, first, second


def test_audio_url_from_one_replica_is_served_by_another(replicas):
    _, first, second = replicas
    made = first.get("/tts?" + query(text=unique_text("Shared URL"))).json()
    path = made["audio_url"].removeprefix(first.base)

    served = second.get(path)

    assert served.status == 200
    assert served.headers["X-Cache"] == "l2"
    assert served.body == first.get(path).body


def test_concurrent_identical_misses_on_two_replicas_run_one_synthesis(replicas):
    _, first, second = replicas
    text = f"{unique_text('Only once')} {PARAGRAPH}"
    before = first.metric("tts_inferences_total") + second.metric("tts_inferences_total")

    with ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(replica.get, "/tts?" + query(text=text)) for replica in (first, second) * 2]
        answers = [call.result().json() for call in calls]

    inferences = first.metric("tts_inferences_total") + second.metric("tts_inferences_total") - before
    chunks = len(PARAGRAPH.split(". ")) + 1  # each sentence is at least one chunk
    assert len({answer["hash"] for answer in answers}) == 1
    assert sorted(answer["cache"] for answer in answers).count("miss") == 4
    assert chunks <= inferences < 2 * chunks
    bodies = {replica.get(f"/audio/{answers[0]['hash']}.wav").body for replica in (first, second)}
    assert len(bodies) == 1


def test_waiting_replica_synthesizes_itself_when_the_lock_holder_died(replicas):
    redis, first, second = replicas
    text = unique_text("Orphaned lock")
    key = first.get("/tts/stream?" + query(text=text)).headers["X-Audio-Hash"]
    client = redis.client()
    deadline = time.monotonic() + 10
    while not client.exists(f"tts:audio:{key}.wav") and time.monotonic() < deadline:
        time.sleep(0.05)  # the stream's audio reaches L2 just after the response ends
    # Forget the audio in L2 and fake a lock holder that died without releasing its lock.
    client.delete(f"tts:audio:{key}.wav")
    client.set(f"tts:lock:{key}", "dead-holder", px=1500)

    started = time.monotonic()
    answer = second.get("/tts?" + query(text=text))
    waited = time.monotonic() - started

    assert answer.status == 200
    assert answer.json()["cache"] == "miss"
    assert waited >= 1.0  # it respected the lock until the lock expired
    deadline = time.monotonic() + 5
    while client.exists(f"tts:lock:{key}") and time.monotonic() < deadline:
        time.sleep(0.05)  # released right after the answer is stored
    assert client.exists(f"tts:lock:{key}") == 0


def test_a_url_minted_while_redis_was_down_reaches_other_replicas_when_it_returns(
    make_server, make_redis, tmp_path
):
    redis = make_redis()
    env = {
        "TTS__REDIS__URL": redis.url,
        "TTS__REDIS__PROBE_INTERVAL_S": "0.5",
        "TTS__REDIS__BREAKER_RESET_S": "0.5",
    }
    first, second = make_server(env, workdir=tmp_path / "a"), make_server(env, workdir=tmp_path / "b")
    redis.stop()
    made = first.get("/tts?" + query(text=unique_text("Minted in the dark")))
    assert made.status == 200  # this replica's disk holds it
    path = made.json()["audio_path"]
    assert second.get(path).status == 404
    # The journal is on disk: a worker restart before Redis is back loses nothing.
    first.stop()
    restarted = make_server(env, workdir=tmp_path / "a")
    # The WAV and its word timings (the caption URLs need them too).
    assert len(list((tmp_path / "a" / "audio" / "journal").glob("*.pending"))) == 2

    redis.start()  # empty, on the same port
    journal = tmp_path / "a" / "audio" / "journal"
    deadline = time.monotonic() + 60
    served = second.get(path)
    while served.status != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        served = second.get(path)
    # One replay round writes the entries one after the other: wait for the last of them too.
    while list(journal.glob("*.pending")) and time.monotonic() < deadline:
        time.sleep(0.2)

    assert (served.status, served.headers["X-Cache"]) == (200, "l2")
    assert served.body == restarted.get(path).body
    assert list(journal.glob("*.pending")) == []


def test_an_entry_dropped_from_a_full_journal_is_still_served_by_its_replica(
    make_server, make_redis, tmp_path
):
    redis = make_redis()
    # Room for one synthesis: its WAV and its word timings.
    env = {"TTS__REDIS__URL": redis.url, "TTS__STORAGE__JOURNAL_MAX_ENTRIES": "2"}
    proc = make_server(env, workdir=tmp_path / "a")
    redis.stop()
    dropped = proc.get("/tts?" + query(text=unique_text("Dropped from the journal"))).json()
    proc.get("/tts?" + query(text=unique_text("Kept in the journal")))
    assert proc.metric("tts_journal_dropped_total") == 2  # the first synthesis's two entries
    proc.stop()  # a new process: nothing in memory, only the disk serves

    served = make_server(env, workdir=tmp_path / "a").get(dropped["audio_path"])

    assert (served.status, served.headers["X-Cache"]) == (200, "disk")
