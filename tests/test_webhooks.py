"""Spec of job webhooks: Standard Webhooks signatures, retries after a failure, and SSRF refusal.

A real HTTP server in a thread receives the callbacks of a real TTS server (with a real Redis);
the address checks run against the real resolver.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from server.jobs.webhooks import GuardedResolver, WebhookPolicy, WebhookRefused, sign
from server.settings import JobsSettings
from tests.conftest import RedisProcess, ServerProcess

SECRET = "whsec_" + base64.b64encode(b"a webhook secret of 32 bytes!!!!").decode()


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST and answers the statuses it is given."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def wait(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} webhooks arrived"
            time.sleep(0.05)


def verify(headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, written from the spec (not with the server's code)."""
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(expected, sig.split(",", 1)[1]) for sig in headers["webhook-signature"].split()
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    redis = RedisProcess(tmp_path_factory.mktemp("hooks-redis")).start()
    env = {
        "TTS__REDIS__URL": redis.url,
        "TTS__JOBS__ALLOW_HTTP_WEBHOOKS": "true",
        "TTS__JOBS__ALLOWED_WEBHOOK_HOSTS": "127.0.0.1",
        "TTS__JOBS__WEBHOOK_RETRY_DELAY_S": "0.2",
        "TTS__JOBS__SWEEP_INTERVAL_S": "1",
        "TTS_WEBHOOK_SECRET": SECRET,
    }
    proc = ServerProcess(tmp_path_factory.mktemp("hooks-server"), env).start()
    yield proc
    proc.stop()
    redis.stop()


def text() -> str:
    return f"A webhook test, number {uuid.uuid4().int % 10**6}, is short."


def test_a_completed_job_calls_its_webhook_signed(server):
    with Receiver([200]) as receiver:
        job_id = server.post("/jobs", {"text": text(), "speed": 4, "webhook_url": receiver.url}).json()["id"]
        receiver.wait(1)
    headers, body = receiver.received[0]
    assert verify(headers, body)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["content-type"] == "application/json"
    event = json.loads(body)
    assert event["type"] == "job.completed"
    assert event["data"]["id"] == job_id
    assert event["data"]["status"] == "completed"
    assert event["data"]["output"]["audio_url"].endswith(".wav")


def test_a_webhook_answered_500_is_retried_with_the_same_id(server):
    with Receiver([500, 200]) as receiver:
        server.post("/jobs", {"text": text(), "speed": 4, "webhook_url": receiver.url})
        receiver.wait(2)
        time.sleep(0.5)  # no third delivery after the 200
        assert len(receiver.received) == 2
    (first, first_body), (second, second_body) = receiver.received
    assert first["webhook-id"] == second["webhook-id"]
    assert verify(first, first_body) and verify(second, second_body)
    assert json.loads(second_body)["data"]["status"] == "completed"


def test_a_cancelled_job_calls_its_webhook(server):
    with Receiver([200]) as receiver:
        sentences = " ".join(f"Sentence {n} of a job to cancel is here." for n in range(40))
        body = {"text": sentences + " " + text(), "speed": 4, "webhook_url": receiver.url}
        job_id = server.post("/jobs", body).json()["id"]
        assert server.post(f"/jobs/{job_id}/cancel", {}).status == 202
        receiver.wait(1)
    assert json.loads(receiver.received[0][1])["type"] == "job.cancelled"


def test_a_job_whose_last_attempt_dies_with_its_worker_fails_and_calls_its_webhook_once(
    make_redis, make_server
):
    redis = make_redis()
    env = {
        "TTS__REDIS__URL": redis.url,
        "TTS__JOBS__MAX_ATTEMPTS": "1",
        "TTS__JOBS__HEARTBEAT_S": "2",
        "TTS__JOBS__SWEEP_INTERVAL_S": "1",
        "TTS__JOBS__ALLOW_HTTP_WEBHOOKS": "true",
        "TTS__JOBS__ALLOWED_WEBHOOK_HOSTS": "127.0.0.1",
        "TTS__JOBS__WEBHOOK_RETRY_DELAY_S": "0.2",
        "TTS_WEBHOOK_SECRET": SECRET,
    }
    first = make_server(env)
    with Receiver([]) as receiver:
        sentences = " ".join(f"Sentence {n} of a job that loses its worker is here." for n in range(40))
        body = {"text": f"{sentences} {text()}", "speed": 4, "webhook_url": receiver.url}
        job_id = first.post("/jobs", body).json()["id"]
        deadline = time.monotonic() + 60
        while first.get(f"/jobs/{job_id}").json()["progress"]["sentences_done"] < 2:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        assert first.proc is not None
        first.proc.kill()  # SIGKILL during its only attempt: no clean-up, the heartbeat just stops
        first.proc.wait(10)
        second = make_server(env)  # its sweep finds the job stale, with no attempt left
        receiver.wait(1)
        time.sleep(1.5)  # and sends no second delivery
        assert len(receiver.received) == 1
    headers, delivered = receiver.received[0]
    assert verify(headers, delivered)
    event = json.loads(delivered)
    assert (event["type"], event["data"]["id"], event["data"]["status"]) == ("job.failed", job_id, "failed")
    assert event["data"]["error"] == {
        "code": "worker_lost",
        "message": "the job's worker stopped during its last attempt",
    }
    assert event["data"]["attempts"] == 1
    # Our own record ended (not only the view derived from SAQ's), and says so to GET.
    client = redis.client()
    assert client.hget(f"tts:job:{job_id}", "status") == b"failed"
    client.close()
    assert second.get(f"/jobs/{job_id}").json()["error"]["code"] == "worker_lost"
    assert second.metric("tts_jobs_total", 'status="failed"') == 1


def test_a_job_whose_last_attempt_times_out_fails_and_calls_its_webhook(make_redis, make_server):
    redis = make_redis()
    server = make_server(
        {
            "TTS__REDIS__URL": redis.url,
            "TTS__JOBS__MAX_ATTEMPTS": "1",
            "TTS__JOBS__TIMEOUT_S": "1",
            "TTS__JOBS__ALLOW_HTTP_WEBHOOKS": "true",
            "TTS__JOBS__ALLOWED_WEBHOOK_HOSTS": "127.0.0.1",
            "TTS_WEBHOOK_SECRET": SECRET,
        }
    )
    with Receiver([]) as receiver:
        sentences = " ".join(f"Sentence {n} of a job that runs out of time is here." for n in range(40))
        job_id = server.post("/jobs", {"text": sentences, "speed": 4, "webhook_url": receiver.url}).json()[
            "id"
        ]
        receiver.wait(1)
    event = json.loads(receiver.received[0][1])
    assert (event["type"], event["data"]["id"]) == ("job.failed", job_id)
    assert event["data"]["error"] == {"code": "synthesis_failed", "message": "the job's attempts ran out"}
    assert event["data"]["progress"]["sentences_done"] < 40


def test_a_webhook_to_a_private_address_is_refused(server):
    resp = server.post("/jobs", {"text": text(), "webhook_url": "http://10.1.2.3/hook"})
    assert resp.status == 400
    assert resp.json()["error"]["code"] == "invalid_request"
    assert "internal address (10.1.2.3)" in resp.json()["error"]["message"]


def test_a_webhook_to_a_name_resolving_to_loopback_is_refused(server):
    resp = server.post("/jobs", {"text": text(), "webhook_url": "http://localhost:9/hook"})
    assert resp.status == 400
    assert "internal address" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
    ],
)
def test_loopback_link_local_and_unspecified_addresses_are_refused(url):
    policy = WebhookPolicy(JobsSettings(allow_http_webhooks=True))
    with pytest.raises(WebhookRefused, match="internal address"):
        asyncio.run(policy.check(url))


def test_only_https_unless_http_is_allowed():
    policy = WebhookPolicy(JobsSettings())
    with pytest.raises(WebhookRefused, match="must use https"):
        policy.check_url("http://example.com/hook")
    assert policy.check_url("https://example.com/hook") == "example.com"


def test_the_address_is_checked_again_when_the_delivery_connects():
    # The resolver the HTTP client connects through refuses what the name resolves to at send time.
    resolver = GuardedResolver(policy=WebhookPolicy(JobsSettings(allow_http_webhooks=True)))
    with pytest.raises(WebhookRefused):
        asyncio.run(resolver.resolve("localhost", 80))


def test_an_allowed_host_may_be_internal():
    resolver = GuardedResolver(policy=WebhookPolicy(JobsSettings(allowed_webhook_hosts=("localhost",))))
    assert asyncio.run(resolver.resolve("localhost", 80))


def test_the_signature_is_standard_webhooks():
    # The example from the Standard Webhooks specification's reference implementation.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
