"""One module per CLI subcommand; each wires a composed config to the parts it uses."""
