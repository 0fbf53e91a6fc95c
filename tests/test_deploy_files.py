"""The Dockerfile and the Kubernetes manifests agree with each other and with the code.

No Docker engine or cluster runs here, so these read the files: probe paths are real routes,
ports line up from the ConfigMap's config to the Service, the grace period covers the drain,
and the image copies what exists and runs what `./start.sh` runs.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import tornado.httputil
import yaml

from server.app import make_app
from server.handlers.health import HealthHandler, ReadyHandler
from server.services import Services
from server.settings import Settings, settings_from_mapping
from tests.conftest import PYTHON, ROOT, free_port

KUBE = ROOT / "config" / "kubernetes"


# -- Kubernetes ------------------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return docs


def manifest(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def tts_container() -> dict[str, Any]:
    (container,) = manifest("Deployment", "tts-server")["spec"]["template"]["spec"]["containers"]
    return container


def literal_env(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def configmap_config() -> dict[str, Any]:
    return yaml.safe_load(manifest("ConfigMap", "tts-server-config")["data"]["config.yaml"])


def pod_settings() -> Settings:
    """The settings a pod runs with: the ConfigMap's config.yaml plus the container's TTS__ env."""
    return settings_from_mapping(configmap_config(), literal_env(tts_container()))


def container_port(container: Mapping[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def test_manifests_are_valid_yaml_with_kind_and_name():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in manifests())
    assert kinds == [
        ("ConfigMap", "tts-server-config"),
        ("Deployment", "tts-server"),
        ("HorizontalPodAutoscaler", "tts-server"),
        ("Ingress", "tts-server"),
        ("Kustomization", "tts-server"),
        ("NetworkPolicy", "redis"),
        ("PodDisruptionBudget", "tts-server"),
        ("Secret", "tts-redis"),
        ("Service", "redis"),
        ("Service", "tts-server"),
        ("StatefulSet", "redis"),
    ]


def test_kustomization_applies_every_manifest_in_the_folder():
    kustomization = manifest("Kustomization", "tts-server")
    files = sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files


def redis_container() -> dict[str, Any]:
    (container,) = manifest("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"]
    return container


def test_redis_has_a_password_from_the_secret_and_protected_mode_on():
    container = redis_container()
    options = dict(zip(container["args"][::2], container["args"][1::2], strict=True))
    assert options["--protected-mode"] == "yes"
    assert options["--requirepass"] == "$(REDIS_PASSWORD)"
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert secret_refs["REDIS_PASSWORD"] == {"name": "tts-redis", "key": "password"}
    server_refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in tts_container()["env"] if "valueFrom" in e
    }
    assert server_refs["REDIS_PASSWORD"] == secret_refs["REDIS_PASSWORD"]
    assert urlsplit(literal_env(tts_container())["TTS__REDIS__URL"]).password == "$(REDIS_PASSWORD)"
    assert "password" in manifest("Secret", "tts-redis")["stringData"]


def test_only_tts_pods_may_reach_redis():
    policy = manifest("NetworkPolicy", "redis")["spec"]
    redis_labels = manifest("StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    tts_labels = manifest("Deployment", "tts-server")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"].items() <= tts_labels.items()
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]


def test_ingress_streams_unbuffered_to_the_tts_service_with_a_long_read_timeout():
    ingress = manifest("Ingress", "tts-server")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 300
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    service = manifest("Service", "tts-server")
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    settings = pod_settings()
    assert settings.server.public_url == f"https://{rule['host']}"
    assert rule["host"] in settings.server.allowed_hosts


def test_trusted_proxies_are_narrowed_to_the_ingress_range_and_s3_is_configured():
    import ipaddress

    settings = pod_settings()
    for proxy in settings.server.trusted_proxies:
        assert ipaddress.ip_network(proxy).prefixlen >= 16
    assert (settings.s3.bucket, settings.s3.prefix) == ("tts-audio", "audio/")
    assert settings.storage.backend in ("disk", "s3")


def test_cpu_cores_follow_the_cgroup_quota_not_the_hosts_cores(tmp_path):
    from server.settings import available_cores, cgroup_cpu_quota

    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 2.5
    assert available_cores(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_quota(v1) == 1.0
    assert available_cores(v1) == 1


# -- compose and pixi ------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))


def test_compose_runs_the_server_with_redis_and_minio_as_its_store():
    services = compose()["services"]
    server = services["server"]
    env = {k: str(v) for k, v in server["environment"].items()}
    settings = settings_from_mapping({}, {k: v for k, v in env.items() if k.startswith("TTS__")})
    assert settings.server.host == "0.0.0.0"
    assert urlsplit(settings.redis.url).hostname == "redis"
    assert settings.storage.backend == "s3"
    assert urlsplit(settings.s3.endpoint_url).hostname == "minio"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)  # the AWS chain, not config
    assert env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
    assert settings.s3.bucket in " ".join(services["bucket"]["command"])
    mounts = {volume.split(":")[1] for volume in server["volumes"]}
    assert {"/app/models", "/app/var/audio"} <= mounts
    assert server["build"] == "."


def test_compose_turns_wyoming_on_and_publishes_its_port_on_loopback():
    server = compose()["services"]["server"]
    env = {k: str(v) for k, v in server["environment"].items() if k.startswith("TTS__")}
    settings = settings_from_mapping({}, env)
    assert settings.wyoming.enabled is True
    assert settings.wyoming.host == "0.0.0.0"
    assert f"127.0.0.1:{settings.wyoming.port}:{settings.wyoming.port}" in server["ports"]
    assert "172.16.0.0/12" in settings.wyoming.allowed_networks  # what Docker's published ports look like


def test_pixi_ignores_its_folder_and_gives_the_gpu_environment_test_and_lint():
    assert ".pixi/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text(encoding="utf-8"))
    features = pixi["environments"]["gpu"]
    tasks = {name for feature in features for name in pixi["feature"][feature].get("tasks", {})}
    assert {"test", "lint"} <= tasks


def test_configmap_config_is_a_valid_server_config():
    settings = pod_settings()
    assert settings.server.host == "0.0.0.0"
    assert settings.logging.format == "json"


def test_probes_hit_the_liveness_and_readiness_routes_of_the_app():
    container = tts_container()
    paths = {probe: container[probe]["httpGet"]["path"] for probe in PROBES}
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    app = make_app(Settings(), Services.build(Settings()))
    handlers = {}
    for path in ("/healthz", "/readyz"):
        start = tornado.httputil.RequestStartLine("GET", path, "HTTP/1.1")
        request = tornado.httputil.HTTPServerRequest(
            start_line=start, headers=tornado.httputil.HTTPHeaders({"Host": "pod"})
        )
        handlers[path] = app.find_handler(request).handler_class
    assert handlers == {"/healthz": HealthHandler, "/readyz": ReadyHandler}


def named(ports: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (port,) = [p for p in ports if p.get("name") == name]
    return port


def test_probe_container_service_and_server_ports_are_one_port():
    container = tts_container()
    declared = named(container["ports"], "http")
    probe_ports = {container_port(container, container[p]["httpGet"]["port"]) for p in PROBES}
    service_port = named(manifest("Service", "tts-server")["spec"]["ports"], "http")
    target = container_port(container, service_port["targetPort"])
    assert probe_ports == {declared["containerPort"]}
    assert target == declared["containerPort"] == pod_settings().server.port
    annotations = manifest("Deployment", "tts-server")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(declared["containerPort"])


def test_wyoming_is_on_in_the_pods_and_its_port_lines_up_from_the_config_to_the_service():
    container = tts_container()
    settings = pod_settings()
    declared = named(container["ports"], "wyoming")
    service_port = named(manifest("Service", "tts-server")["spec"]["ports"], "wyoming")
    assert [p["name"] for p in container["ports"]] == ["http", "wyoming"]
    assert settings.wyoming.enabled is True
    assert settings.wyoming.host == "0.0.0.0"
    assert container_port(container, service_port["targetPort"]) == declared["containerPort"]
    assert declared["containerPort"] == service_port["port"] == settings.wyoming.port == 10200
    assert settings.wyoming.allowed_networks == ("10.0.0.0/8",)  # the cluster range, not the world


def test_service_and_hpa_select_the_deployment():
    deployment = manifest("Deployment", "tts-server")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = manifest("Service", "tts-server")["spec"]["selector"]
    assert selector.items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = manifest("HorizontalPodAutoscaler", "tts-server")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tts-server",
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # A fixed count in the Deployment would undo the HPA's on every apply.
    assert "replicas" not in deployment["spec"]


def gunicorn_config_for_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """config/gunicorn.conf.py evaluated in the pod's environment: the ConfigMap plus its env."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(configmap_config()), encoding="utf-8")
    for name in [n for n in os.environ if n.startswith("TTS")]:
        monkeypatch.delenv(name)
    for name, value in literal_env(tts_container()).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TTS_CONFIG", str(config_file))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))


def test_termination_grace_outlasts_prestop_and_gunicorns_drain(monkeypatch, tmp_path):
    pod = manifest("Deployment", "tts-server")["spec"]["template"]["spec"]
    container = tts_container()
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = int(command[1])
    gunicorn = gunicorn_config_for_pod(monkeypatch, tmp_path)
    settings = pod_settings()
    # gunicorn's own wait must cover the app's drain, and the kubelet's must cover both.
    assert gunicorn["graceful_timeout"] >= settings.server.graceful_timeout_s
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + gunicorn["graceful_timeout"]
    assert pre_stop_s >= 5  # long enough for kube-proxy and ingresses to drop the endpoint


def test_workers_times_inference_threads_fit_the_cpu_limit(monkeypatch, tmp_path):
    settings = pod_settings()
    # 0 would mean one worker per two *node* cores: os.cpu_count() ignores the pod's limit.
    assert settings.server.workers > 0
    assert settings.synthesis.intra_op_threads > 0
    gunicorn = gunicorn_config_for_pod(monkeypatch, tmp_path)
    limit = cpu_cores(str(tts_container()["resources"]["limits"]["cpu"]))
    assert gunicorn["workers"] == settings.server.workers
    assert settings.server.workers * settings.synthesis.intra_op_threads <= limit


def test_config_comes_from_the_configmap_through_tts_config():
    pod = manifest("Deployment", "tts-server")["spec"]["template"]["spec"]
    container = tts_container()
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert volumes[mount["name"]]["configMap"]["name"] == "tts-server-config"
    assert literal_env(container)["TTS_CONFIG"] == f"{mount['mountPath']}/config.yaml"


def test_every_path_the_server_writes_is_a_volume():
    """The root filesystem is read-only: audio files and /tmp must be mounted emptyDirs."""
    pod = manifest("Deployment", "tts-server")["spec"]["template"]["spec"]
    container = tts_container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    empty_dirs = {
        PurePosixPath(m["mountPath"]) for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]
    }
    image = dockerfile()
    storage = PurePosixPath(image.workdir) / pod_settings().storage.dir
    metrics = PurePosixPath(image.env["PROMETHEUS_MULTIPROC_DIR"])
    for path in (storage, metrics, PurePosixPath("/tmp")):
        assert any(path == d or d in path.parents for d in empty_dirs), f"{path} is not on a volume"


def test_pod_runs_as_the_images_non_root_user():
    security = manifest("Deployment", "tts-server")["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == dockerfile().user


def test_redis_url_points_at_the_redis_service():
    url = urlsplit(literal_env(tts_container())["TTS__REDIS__URL"])
    service = manifest("Service", "redis")
    (port,) = service["spec"]["ports"]
    assert (url.scheme, url.hostname, url.port) == ("redis", service["metadata"]["name"], port["port"])
    statefulset = manifest("StatefulSet", "redis")
    assert statefulset["spec"]["serviceName"] == "redis"
    assert service["spec"]["clusterIP"] == "None"
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_redis_is_a_bounded_lru_cache_without_persistence():
    (container,) = manifest("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    options = dict(zip(args[::2], args[1::2], strict=True))
    assert options["--maxmemory-policy"] == "allkeys-lru"
    assert options["--save"] == ""
    assert options["--appendonly"] == "no"
    maxmemory_mib = int(options["--maxmemory"].removesuffix("mb"))
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    assert maxmemory_mib < int(limit.removesuffix("Gi")) * 1024  # room for Redis' own overhead


# -- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]]


@dataclass
class Image:
    """What the final stage declares."""

    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def last(self, keyword: str) -> str:
        values = [rest for key, rest in self.final.instructions if key == keyword]
        assert values, f"the final stage has no {keyword}"
        return values[-1]

    @property
    def workdir(self) -> str:
        return self.last("WORKDIR")

    @property
    def user(self) -> str:
        return self.last("USER")

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for key, rest in self.final.instructions:
            if key == "ENV":
                env.update(item.split("=", 1) for item in shlex.split(rest))
        return env


def instructions(text: str) -> Iterator[tuple[str, str]]:
    """(KEYWORD, arguments) with line continuations joined and comment lines dropped."""
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, rest = logical.partition(" ")
        yield keyword.upper(), rest.strip()
        logical = ""


def dockerfile() -> Image:
    stages: list[Stage] = []
    for keyword, rest in instructions((ROOT / "Dockerfile").read_text(encoding="utf-8")):
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(words[0], name, []))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return Image(stages)


def copies(stage: Stage) -> Iterator[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from another stage)."""
    for keyword, rest in stage.instructions:
        if keyword != "COPY":
            continue
        words = shlex.split(rest)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        paths = [w for w in words if not w.startswith("--")]
        yield paths[:-1], paths[-1]


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def docker_ignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins, and a matched folder takes its contents."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def start_sh_serve_command() -> list[str]:
    text = (ROOT / "start.sh").read_text(encoding="utf-8")
    branch = text.split("\n    serve)\n", 1)[1].split(";;", 1)[0]
    (line,) = [ln.strip() for ln in branch.splitlines() if ln.strip().startswith("exec ")]
    words = shlex.split(line)[1:]
    assert words[-1] == "$@"
    return words[:-1]


def test_dockerfile_is_multi_stage_with_a_separate_runtime_stage():
    image = dockerfile()
    assert len(image.stages) >= 2
    assert image.final.name == "runtime"
    copied_from = {rest.split()[0] for key, rest in image.final.instructions if key == "COPY"}
    assert "--from=build" in copied_from
    assert not any("uv " in rest for key, rest in image.final.instructions if key == "RUN")


def test_dockerfile_installs_the_locked_extra_that_runtime_selects():
    image = dockerfile()
    (build,) = [s for s in image.stages if s.name == "build"]
    assert ("ARG", "RUNTIME=cpu") in build.instructions
    (sync,) = [rest for key, rest in build.instructions if key == "RUN" and "uv sync" in rest]
    assert 'uv sync --frozen --no-dev --no-install-project --extra "${RUNTIME}"' in sync
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    assert {"cpu", "gpu"} <= extras.keys()


def test_every_copy_source_exists_and_reaches_the_build_context():
    for stage in dockerfile().stages:
        for sources, _ in copies(stage):
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
                assert not docker_ignored(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_repository_clutter_out_of_the_context():
    for path in (".git", ".venv", "models/en_US-x-medium.onnx", "tests", "tests/conftest.py", "var/audio"):
        assert docker_ignored(path), path
    for path in ("server/app.py", "config/gunicorn.conf.py", "config.yaml", "uv.lock", "pyproject.toml"):
        assert not docker_ignored(path), path


def test_image_cmd_is_the_start_sh_serve_command():
    image = dockerfile()
    cmd = json.loads(image.last("CMD"))
    expected = start_sh_serve_command()
    # start.sh runs from the repository root, the image from its WORKDIR.
    expected[0] = str(PurePosixPath(image.workdir) / expected[0])
    assert cmd == expected


def test_image_runs_as_a_non_root_user_with_a_writable_var():
    image = dockerfile()
    user, _, group = image.user.partition(":")
    assert user.isdigit() and int(user) != 0
    assert group.isdigit() and int(group) != 0
    runs = " ".join(rest for key, rest in image.final.instructions if key == "RUN")
    assert "chown -R tts:tts var" in runs
    assert re.search(rf"useradd .*--uid {user} ", runs)


def test_image_listens_on_all_interfaces_on_the_configured_port():
    image = dockerfile()
    assert image.env["TTS__SERVER__HOST"] == "0.0.0.0"
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    assert image.last("EXPOSE").split() == [str(config["server"]["port"]), str(config["wyoming"]["port"])]
    assert image.env["TTS__WYOMING__ENABLED"] == "true"
    assert image.env["TTS__WYOMING__HOST"] == "0.0.0.0"
    assert image.env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


def healthcheck_argv() -> list[str]:
    spec = dockerfile().last("HEALTHCHECK")
    argv = json.loads(spec[spec.index("CMD") + len("CMD") :].strip())
    assert argv[0] == "python"
    return [PYTHON, *argv[1:]]


def test_healthcheck_passes_against_a_live_server(server):
    env = {"TTS__SERVER__PORT": str(server.port), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(healthcheck_argv(), env=env, cwd=ROOT, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    assert "/healthz" in " ".join(healthcheck_argv())


def test_healthcheck_uses_the_port_from_the_config_file(server, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  port: {server.port}\n")
    env = {"TTS_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(healthcheck_argv(), env=env, cwd=ROOT, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode()


def test_healthcheck_fails_when_nothing_listens():
    env = {"TTS__SERVER__PORT": str(free_port()), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(healthcheck_argv(), env=env, cwd=ROOT, capture_output=True, timeout=30)
    assert result.returncode == 1
    assert b"Connection refused" in result.stderr
