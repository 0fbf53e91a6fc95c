"""gunicorn settings for `./start.sh`, derived from the same validated config as the app.

Workers times onnxruntime threads never exceeds the cores (see Settings.intra_op_threads), and
gunicorn's graceful timeout outlasts the app's own drain so the master never kills a draining
worker early.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from server.cache.s3 import StoreMisconfigured, check_bucket
from server.memory import limit_malloc_arenas
from server.settings import SettingsError, load_settings
from server.synthesis.files import check_voices

# In the master, which has no threads yet: the workers it forks inherit the limit.
limit_malloc_arenas()

try:
    _settings = load_settings()
    # In the master, before any worker forks: a bad default voice stops the server with one line
    # instead of leaving every worker up but never ready. (No onnxruntime import here.)
    for _line in check_voices(_settings):
        print(_line, file=sys.stderr)
    # A missing or forbidden bucket stops here; an unreachable store only delays readiness.
    if _settings.storage.backend == "s3" and not check_bucket(_settings.s3):
        print("object store unreachable; workers stay unready and retry", file=sys.stderr)
except (SettingsError, StoreMisconfigured) as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)

bind = [f"{_settings.server.host}:{_settings.server.port}"]
workers = _settings.worker_count()
worker_class = "server.worker.GracefulTornadoWorker"
graceful_timeout = int(_settings.server.graceful_timeout_s) + 5
timeout = 60  # heartbeat: a worker whose loop is stuck this long is replaced
keepalive = int(_settings.server.idle_connection_timeout_s)
preload_app = False  # models and Redis clients are made in each worker, after the fork
accesslog = None  # the app logs each request itself, as JSON
proc_name = "tts-server"
# gunicorn >= 25.1 opens a control socket at ~/.gunicorn/gunicorn.ctl by default: nothing here uses
# it, every instance of a user shares (and unlinks) that one path, and the image's user has no
# writable home, so it would only log a warning at each start.
control_socket_disable = True

# Metrics from every worker are summed through files in this directory.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tts-metrics-")
else:
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


_private_redis = None


def on_starting(server):
    # No Redis configured: one private redis-server for all workers (L2 and the job queue), whose
    # URL they read from the environment; it stops with the master (see server.private_redis).
    global _private_redis
    if _settings.redis.url is None:
        from server.private_redis import PrivateRedis

        _private_redis = PrivateRedis(_settings.redis.private_socket).start()
        os.environ["TTS__REDIS__URL"] = _private_redis.url
    # Stale files from an earlier run would add old counts to the new ones.
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.remove(os.path.join(directory, name))


def on_exit(server):
    if _private_redis is not None:
        _private_redis.stop()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
