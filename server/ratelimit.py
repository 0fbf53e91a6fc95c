"""Per-client token buckets, shared by all workers and replicas through Redis.

Two buckets per client: `requests` (every speech or audio request, hits included) and
`synthesis` (only requests that start a new synthesis, the expensive kind). The bucket lives in
Redis, updated atomically by a Lua script on Redis's own clock, so every replica sees the same
count. When Redis is off or failing, an in-process bucket per worker takes over: limits get
looser (one bucket per worker), never absent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Final

from cachetools import TTLCache

from server.cache.redis import RedisCache
from server.settings import LimitSettings

# KEYS[1] bucket; ARGV rate (tokens/s), burst, cost. Returns {allowed, tokens left * 1000}.
_TAKE: Final = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, math.floor(tokens * 1000)}
"""

REQUESTS: Final = "requests"
SYNTHESIS: Final = "synthesis"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # seconds until one token is back (when refused)

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


class _LocalBucket:
    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.last = now


class RateLimiter:
    def __init__(self, settings: LimitSettings, redis: RedisCache, *, clock=time.monotonic) -> None:
        self._settings = settings
        self._redis = redis
        self._clock = clock
        self._local: TTLCache[str, _LocalBucket] = TTLCache(maxsize=100_000, ttl=3600)

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    def _params(self, bucket: str) -> tuple[float, int]:
        s = self._settings
        if bucket == SYNTHESIS:
            return s.synthesis_per_minute / 60, s.synthesis_burst
        return s.requests_per_minute / 60, s.requests_burst

    def synthesis_cost(self, text_chars: int) -> int:
        """Tokens a new synthesis costs: one per started `synthesis_unit_chars` of text.

        A backend speaking a document one sentence per request spends about what one request
        for the whole document would, so short sentences are cheap and long texts are not.
        """
        return max(1, math.ceil(text_chars / self._settings.synthesis_unit_chars))

    async def take(self, client: str, bucket: str, cost: int = 1) -> Decision:
        """Take `cost` tokens from `client`'s bucket; the decision says whether they were there."""
        rate, burst = self._params(bucket)
        cost = min(cost, burst)  # a text longer than the whole burst still gets through when full
        tokens: float | None = None
        allowed = False
        if self._redis.enabled:
            reply = await self._redis.eval(_TAKE, f"rl:{bucket}:{client}", rate, burst, cost)
            if reply is not None:
                allowed, tokens = bool(reply[0]), int(reply[1]) / 1000
        if tokens is None:
            allowed, tokens = self._take_local(f"{bucket}:{client}", rate, burst, cost)
        return Decision(
            allowed=allowed,
            limit=burst,
            remaining=int(tokens),
            reset_s=math.ceil((burst - tokens) / rate),
            retry_after_s=0 if allowed else max(1, math.ceil((cost - tokens) / rate)),
        )

    def _take_local(self, name: str, rate: float, burst: int, cost: int) -> tuple[bool, float]:
        now = self._clock()
        state = self._local.get(name)
        if state is None:
            state = self._local[name] = _LocalBucket(burst, now)
        state.tokens = min(burst, state.tokens + (now - state.last) * rate)
        state.last = now
        if state.tokens >= cost:
            state.tokens -= cost
            return True, state.tokens
        return False, state.tokens
