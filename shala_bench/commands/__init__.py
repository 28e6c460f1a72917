"""One module per `shala-bench` subcommand, each with `add_parser(sub)`."""
