"""Local stand-ins for outside services (an OpenAI-compatible server), for tests and benchmarks."""
