"""The back room, one module per named stage of an event's way through the worker."""
