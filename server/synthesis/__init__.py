"""Speech synthesis: Piper voices, text chunking and the inference scheduler."""
