"""One module per `mhpo-vl` subcommand: add_arguments(parser) and run(args) -> int."""
