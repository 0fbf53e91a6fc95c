"""The object store tier (S3, MinIO, R2, Ceph, GCS interoperability): durable, shared by every replica.

It holds opaque named entries (`KEY.wav`, and any other `KEY.ext` a tier is given) under
`s3.prefix`; the object name is prefix + entry name, nothing else. Like Redis, every call here
answers "miss" or "not stored" on failure and never raises, with explicit timeouts, no retries and
a circuit breaker, so an outage of the store costs each request at most one timeout.
Credentials come only from the AWS chain (environment, shared files, instance or pod identity);
signing is botocore's, whose client is imported on the first call: a worker without a store
configured never loads aiobotocore (about 30 MiB).
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Callable
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError
from loguru import logger

from server.settings import S3Settings

BREAKER_FAILURES: Final = 3
BREAKER_RESET_S: Final = 5.0
MISSING_CODES: Final = frozenset({"404", "NoSuchKey", "NotFound"})
FATAL_BUCKET_CODES: Final = frozenset({"404", "NoSuchBucket", "403", "AccessDenied", "AllAccessDisabled"})


class StoreMisconfigured(Exception):
    """The bucket does not exist or denies us: a configuration mistake, not an outage."""


class ObjectStore:
    """Named entries in one bucket; `state` is ok, degraded or disabled (no store configured)."""

    def __init__(
        self,
        settings: S3Settings,
        *,
        enabled: bool,
        on_error: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._enabled = enabled
        self._on_error = on_error
        self._clock = clock
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._failures = 0
        self._open_until = 0.0
        self._degraded = False
        self.verified = False  # the start-up bucket check has passed
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def state(self) -> str:
        if not self._enabled:
            return "disabled"
        return "degraded" if self._degraded or not self.verified else "ok"

    @property
    def where(self) -> str:
        """Bucket and endpoint, as every log line and error about the store names them."""
        return f"bucket {self._settings.bucket!r} at {self._settings.endpoint_url or 'AWS S3'}"

    def object_name(self, name: str) -> str:
        return f"{self._settings.prefix}{name}"

    async def _s3(self) -> Any:
        if self._client is None:
            from aiobotocore.session import get_session
            from botocore.config import Config

            s = self._settings
            config = Config(
                connect_timeout=s.timeout_s,
                read_timeout=s.timeout_s,
                retries={"total_max_attempts": 1},  # the breaker decides, not botocore's retries
                # MinIO and most S3-compatible stores want path-style names; AWS takes both.
                s3={"addressing_style": "path" if s.endpoint_url else "auto"},
                signature_version="s3v4",
            )
            options: dict[str, Any] = {"config": config}
            if s.endpoint_url:
                options["endpoint_url"] = s.endpoint_url
            if s.region:
                options["region_name"] = s.region
            self._client = await self._stack.enter_async_context(get_session().create_client("s3", **options))
        return self._client

    def _allowed(self) -> bool:
        return self._enabled and self._clock() >= self._open_until

    def _succeeded(self) -> None:
        self._failures = 0
        if self._degraded:
            self._degraded = False
            logger.info("object store reachable again: {}", self.where)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self._on_error()
        self._failures += 1
        if not self._degraded:
            self._degraded = True
            logger.warning("object store unavailable ({}): {}", self.where, type(exc).__name__)
        if self._failures >= BREAKER_FAILURES:
            self._open_until = self._clock() + BREAKER_RESET_S

    async def _call(self, method: str, **kwargs: Any) -> tuple[Any, bool]:
        """(result, True), or (None, True) for a missing object, or (None, False) on failure."""
        if not self._allowed():
            return None, False
        try:
            client = await self._s3()
            result = await getattr(client, method)(Bucket=self._settings.bucket, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in MISSING_CODES:
                self._succeeded()
                return None, True
            self._failed(exc)
            return None, False
        except (BotoCoreError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None, False
        self._succeeded()
        return result, True

    async def check(self) -> bool:
        """Start-up check: True when the bucket answers, False when the endpoint is unreachable.

        Raises StoreMisconfigured (one line naming bucket and endpoint) for a bucket that does
        not exist or denies access: retrying cannot fix that, so the server must not start.
        """
        try:
            client = await self._s3()
            await client.head_bucket(Bucket=self._settings.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in FATAL_BUCKET_CODES:
                reason = "does not exist" if code in ("404", "NoSuchBucket") else "denies access"
                raise StoreMisconfigured(f"object store: {self.where} {reason}") from None
            self._failed(exc)
            return False
        except (BotoCoreError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return False
        self.verified = True
        self._succeeded()
        return True

    async def get(self, name: str) -> bytes | None:
        result, ok = await self._call("get_object", Key=self.object_name(name))
        if not ok or result is None:
            return None
        try:
            async with result["Body"] as body:
                return bytes(await body.read())
        except (BotoCoreError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None

    async def put(self, name: str, data: bytes, content_type: str) -> bool:
        _, ok = await self._call(
            "put_object", Key=self.object_name(name), Body=data, ContentType=content_type
        )
        return ok

    async def touch(self, name: str) -> bool:
        """Restart the object's age (what lifecycle rules count) by copying it onto itself."""
        key = self.object_name(name)
        result, ok = await self._call(
            "copy_object",
            Key=key,
            CopySource={"Bucket": self._settings.bucket, "Key": key},
            MetadataDirective="REPLACE",
            ContentType="audio/wav" if name.endswith(".wav") else "application/octet-stream",
        )
        return ok and result is not None

    async def delete(self, name: str) -> bool:
        _, ok = await self._call("delete_object", Key=self.object_name(name))
        return ok

    async def purge(self) -> int:
        """Delete every object under the prefix (a listing, then deletes in pages of 1000)."""
        removed = 0
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page, ok = await self._call("list_objects_v2", Prefix=self._settings.prefix, **extra)
            if not ok or page is None:
                return removed
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                _, ok = await self._call("delete_objects", Delete={"Objects": keys, "Quiet": True})
                removed += len(keys) if ok else 0
            token = page.get("NextContinuationToken")
            if not token:
                return removed

    async def url(self, name: str) -> tuple[str, datetime.datetime | None] | None:
        """Where a client may fetch the entry directly, with the expiry of a presigned URL.

        None when neither public_base_url nor presign_s is set: `/audio/...` serves it then.
        """
        s = self._settings
        if s.public_base_url:
            return f"{s.public_base_url.rstrip('/')}/{self.object_name(name)}", None
        if not s.presign_s:
            return None
        client = await self._s3()
        # Presigning is local (no request), so it works during an outage too.
        url = await client.generate_presigned_url(
            "get_object",
            Params={"Bucket": s.bucket, "Key": self.object_name(name)},
            ExpiresIn=s.presign_s,
        )
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=s.presign_s)
        return str(url), expires.replace(microsecond=0)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._stack.aclose()
        self._client = None


def check_bucket(settings: S3Settings) -> bool:
    """Blocking start-up check before any worker starts; see `ObjectStore.check`."""
    import asyncio

    async def run() -> bool:
        store = ObjectStore(settings, enabled=True)
        try:
            return await store.check()
        finally:
            await store.close()

    return asyncio.run(run())
