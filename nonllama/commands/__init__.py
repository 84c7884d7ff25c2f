"""One module per stage command; each registers itself on `nonllama.cli.app`."""
