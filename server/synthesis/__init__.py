"""Speech synthesis: Piper voices, text chunking, PCM framing and the inference scheduler."""
