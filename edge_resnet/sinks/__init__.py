"""Outputs of the daemon; one module per kind, all behind the `Sink` protocol in base.py."""
