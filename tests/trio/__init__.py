"""trio tests: autojump_clock for anything timed, real sockets on 127.0.0.1 port 0, each capped
with trio.fail_after; many run on both engines (SQLite and PostgreSQL)."""
