"""Cache tiers: in-process L1, shared Redis L2, and the audio files on disk."""
