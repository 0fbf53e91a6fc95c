"""`/voices`: the voices this server speaks with."""

from __future__ import annotations

from server.handlers.base import BaseHandler
from server.openapi import Reply, operation
from server.schemas import VoiceInfo, Voices, dump


class VoicesHandler(BaseHandler):
    route = "/voices"

    @operation(operation_id="voices", replies={200: Reply("Voice catalog", {"application/json": Voices})})
    def get(self) -> None:
        """The voices this server speaks with: id, language, sample rate and speakers."""
        catalog = self.services.catalog
        voices = [
            VoiceInfo(
                id=info.id,
                language=info.language,
                sample_rate=info.sample_rate,
                num_speakers=info.num_speakers,
                speakers=list(info.speakers),
            )
            for info in catalog.infos()
        ]
        self.write_json(dump(Voices(default=catalog.default_voice, voices=voices)))
