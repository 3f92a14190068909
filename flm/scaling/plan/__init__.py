"""The `flm plan` command group (cli.py): search a plan's schedule, rank parallel layouts, plan when to grow."""
