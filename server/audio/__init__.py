"""Audio formats: PCM and WAV framing, and the streaming encoders for compressed formats."""
