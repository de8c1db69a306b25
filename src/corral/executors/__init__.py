"""Executors: where a call runs (the event loop, a thread pool, a process pool)."""
