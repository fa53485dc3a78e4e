"""TickStock Hub HTTP and websocket API, settings and the `tickstock` command."""
