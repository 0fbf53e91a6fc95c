"""The L2 URL may name a single node, a Sentinel-managed master or a Redis Cluster."""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import query, redis_server_binary, unique_text


def _port_pair_free(port: int) -> bool:
    for candidate in (port, port + 10000):  # a cluster node also listens on port + 10000
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def _cluster_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 29999)
        if port not in ports and _port_pair_free(port):
            ports.append(port)
    return ports


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture
def processes():
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
        proc.wait(10)


def test_sentinel_url_reaches_the_master_sentinel_names(make_redis, make_server, processes, tmp_path: Path):
    master = make_redis()
    sentinel_port = _cluster_ports(1)[0]
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor primary 127.0.0.1 {master.port} 1\n"
    )
    processes.append(
        subprocess.Popen(
            [redis_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    _wait_for_port(sentinel_port)
    server = make_server({"TTS__REDIS__URL": f"redis+sentinel://127.0.0.1:{sentinel_port}/primary/0"})

    answer = server.get("/tts?" + query(text=unique_text("Through sentinel"))).json()

    assert server.get("/readyz").json()["redis"] == "ok"
    assert master.client().exists(f"tts:audio:{answer['hash']}.wav") == 1


def test_cluster_url_spreads_keys_over_the_cluster(make_server, processes, tmp_path: Path):
    ports = _cluster_ports(3)
    for port in ports:
        processes.append(
            subprocess.Popen(
                [
                    redis_server_binary(),
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(tmp_path / f"nodes-{port}.conf"),
                    "--dir",
                    str(tmp_path),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    for port in ports:
        _wait_for_port(port)
    cli = Path(redis_server_binary()).with_name("redis-cli")
    subprocess.run(
        [
            str(cli),
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    from redis.cluster import RedisCluster

    cluster = RedisCluster(host="127.0.0.1", port=ports[0], socket_timeout=2)
    deadline = time.monotonic() + 20
    while cluster.cluster_info().get("cluster_state") != "ok" and time.monotonic() < deadline:
        time.sleep(0.1)
    server = make_server({"TTS__REDIS__URL": f"redis+cluster://127.0.0.1:{ports[0]}"})

    hashes = [server.get("/tts?" + query(text=unique_text(f"Cluster {n}"))).json()["hash"] for n in range(3)]

    assert server.get("/readyz").json()["redis"] == "ok"
    assert all(cluster.exists(f"tts:audio:{key}.wav") == 1 for key in hashes)
    cluster.close()
