"""A media worker: the audio path and the Realtime session of the calls assigned to it."""
