"""TickStock Hub: event pipeline, fan-out and embedded servers."""
