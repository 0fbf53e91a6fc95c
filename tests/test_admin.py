"""The admin API: off without keys, 401 without the right key, and each action does its job."""

from __future__ import annotations

import pytest

from tests.conftest import query, unique_text

KEY = "k" * 20 + "-admin-test-key"
OTHER_KEY = "x" * 40


@pytest.fixture
def admin(make_server, make_redis):
    redis = make_redis()
    server = make_server({"TTS_ADMIN_API_KEYS": f"{OTHER_KEY},{KEY}", "TTS__REDIS__URL": redis.url})
    return server, redis


def as_admin(key: str = KEY) -> dict[str, str]:
    return {"X-API-Key": key}


def test_admin_api_is_off_without_configured_keys(server):
    resp = server.get("/admin/storage", headers=as_admin())
    assert resp.status == 404
    assert resp.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong-key-wrong-key"}, {"X-API-Key": KEY[:-1]}])
def test_admin_api_refuses_missing_or_wrong_key_and_logs_the_client_not_the_key(admin, headers):
    server, _ = admin
    resp = server.get("/admin/config", headers=headers)
    assert resp.status == 401
    assert resp.json()["error"]["code"] == "unauthorized"
    assert "admin API: missing or wrong key from 127.0.0.1" in server.logs()
    assert KEY not in server.logs()


def test_admin_keys_can_come_from_a_mounted_secret_file(make_server, tmp_path):
    secret = tmp_path / "keys"
    secret.write_text(f"\n{KEY}\n")
    server = make_server({"TTS_ADMIN_API_KEYS_FILE": str(secret)})
    assert server.get("/admin/storage", headers=as_admin()).status == 200


def test_effective_config_masks_secrets(make_server, make_redis):
    redis = make_redis()
    server = make_server(
        {
            "TTS_ADMIN_API_KEYS": KEY,
            "TTS__REDIS__URL": f"redis://user:s3cret-pass@127.0.0.1:{redis.port}/0",
        }
    )
    resp = server.get("/admin/config", headers=as_admin())
    assert resp.status == 200
    config = resp.json()
    assert config["redis"]["url"] == f"redis://****@127.0.0.1:{redis.port}/0"
    assert config["admin_api_keys"] == "1 configured"
    assert b"s3cret-pass" not in resp.body and KEY.encode() not in resp.body


def test_storage_statistics_count_the_files_behind_urls(admin):
    server, _ = admin
    server.get("/tts?" + query(text=unique_text("Stored")))
    stats = server.get("/admin/storage", headers=as_admin()).json()
    assert stats["disk"]["files"] == 2  # the WAV and its word timings (behind the caption URLs)
    assert stats["disk"]["bytes"] > 44
    assert stats["disk"]["expired"] == 0


def test_cleanup_removes_expired_files_only(make_server):
    server = make_server(
        {"TTS_ADMIN_API_KEYS": KEY, "TTS__STORAGE__TTL_S": "1", "TTS__STORAGE__CLEANUP_INTERVAL_S": "86400"}
    )
    made = server.get("/tts?" + query(text=unique_text("Expiring"))).json()
    import time

    time.sleep(1.5)
    assert server.post("/admin/cleanup", {}, headers=as_admin()).json() == {"removed": 2}  # WAV and words
    assert server.get("/admin/storage", headers=as_admin()).json()["disk"]["files"] == 0
    assert made["hash"]


def test_deleting_an_entry_removes_it_from_every_tier(admin):
    server, redis = admin
    made = server.get("/tts?" + query(text=unique_text("Doomed"))).json()
    key = made["hash"]
    assert server.get(f"/audio/{key}.wav").status == 200

    resp = server.request_raw("DELETE", f"/admin/audio/{key}", headers=as_admin())

    assert resp.status == 200
    assert resp.json() == {"deleted": key}
    assert server.get(f"/audio/{key}.wav").status == 404
    assert redis.client().exists(f"tts:audio:{key}.wav") == 0


def test_purge_all_empties_every_tier(admin):
    server, redis = admin
    keys = [server.get("/tts?" + query(text=unique_text("Purged"))).json()["hash"] for _ in range(2)]

    resp = server.post("/admin/purge", {"all": True}, headers=as_admin())

    assert resp.status == 200
    assert resp.json()["removed"] == {"redis": 4, "disk": 4}  # each a WAV and its word timings
    assert all(server.get(f"/audio/{key}.wav").status == 404 for key in keys)
    assert redis.client().keys("tts:audio:*") == []


def test_purge_rejects_a_malformed_body(admin):
    server, _ = admin
    resp = server.post("/admin/purge", {"hash": "../../etc/passwd"}, headers=as_admin())
    assert resp.status == 400
    assert resp.json()["error"]["code"] == "invalid_request"
