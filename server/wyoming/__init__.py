"""The Wyoming front door: Home Assistant's voice pipeline speaking to the same `SpeechService`.

`server.py` listens in every worker (SO_REUSEPORT), `handler.py` turns one connection's events
into speech requests and audio events, `events.py` reads events within bounds, `voices.py` maps
our voices to Wyoming's `info` and back, `sentences.py` cuts streamed text into sentences, and
`discovery.py` announces the server over zeroconf. Nothing here knows about cache tiers.
"""
