"""``python -m dreamgen_async.cli`` runs the ``dreamgen`` command."""

from dreamgen_async.cli.commands import main

if __name__ == "__main__":
    main()
