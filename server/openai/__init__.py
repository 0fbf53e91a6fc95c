"""The OpenAI-compatible front door: `/v1/audio/speech` and the discovery routes OpenAI clients read."""
