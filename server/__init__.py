"""Streaming text-to-speech server: Piper voices on onnxruntime behind Tornado, with tiered caching."""
