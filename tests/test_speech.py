"""Spec of the speech service's request resolution (voice, text plan, key), on the real bundled voice.

The services are built as a worker builds them, with Redis off and storage in a temporary folder.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from server.request import SpeechRequest, parse_speech_request
from server.services import Services
from tests.test_window_scheduling import make_settings


def test_a_remembered_resolution_is_the_one_made_afresh_and_follows_a_voice_reload(tmp_path):
    async def scenario() -> None:
        settings = make_settings(tmp_path)
        services = Services.build(settings)
        await services.start()
        speech, catalog = services.speech, services.catalog
        try:
            plain = parse_speech_request(
                {"text": "Hello there. How are you?"},
                default_voice=settings.synthesis.default_voice,
                max_chars=settings.synthesis.max_text_chars,
            )
            requests: list[SpeechRequest] = [
                plain,
                replace(plain, volume=1),  # equal to 1.0, but the key writes it as 1
                replace(plain, length_scale=1.25, speed="slow"),
            ]
            for repeat, request in enumerate(requests * 2):
                remembered, anew = await speech._resolve(request)
                assert anew == (repeat < len(requests))  # a repeat is not resolved again
                voice = catalog.get(request.voice)
                assert remembered == await speech._resolve_anew(request, voice)
            assert len({(await speech._resolve(r))[0].key for r in requests}) == 3

            before = catalog.get(plain.voice)
            await asyncio.get_running_loop().run_in_executor(None, catalog.load)  # a reload
            after = catalog.get(plain.voice)
            assert after is not before
            assert (await speech._resolve(plain))[0].voice is after
        finally:
            await services.close()

    asyncio.run(scenario())
