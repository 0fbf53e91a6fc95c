"""`/voices`: the voices this server speaks with."""

from __future__ import annotations

from server.handlers.base import BaseHandler


class VoicesHandler(BaseHandler):
    route = "/voices"

    def get(self) -> None:
        """Each voice's id, language, sample rate and speakers."""
        catalog = self.services.catalog
        self.write_json(
            {
                "default": catalog.default_voice,
                "voices": [
                    {
                        "id": info.id,
                        "language": info.language,
                        "sample_rate": info.sample_rate,
                        "num_speakers": info.num_speakers,
                        "speakers": info.speakers,
                    }
                    for info in catalog.infos()
                ],
            }
        )
