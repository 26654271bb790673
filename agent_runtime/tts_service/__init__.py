"""`agent-runtime tts-serve`: a configured TTS engine as a speech service (see protocol.py)."""
