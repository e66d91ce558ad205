"""Process tests: the server as a separate process (SIGKILL, SIGTERM, restarts, TLS, the
command line)."""
