"""One module per CLI sub-command; each defines `register(subparsers)` and is imported only when used."""
