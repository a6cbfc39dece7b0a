"""End-to-end tests: the real server in a subprocess, real WebSocket and HTTP clients."""
