"""One module per scenario: ``NAME``, ``HELP``, ``add_arguments(parser)``, ``async run(args) -> Path``."""
