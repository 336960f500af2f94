"""``python -m dreamgen_async`` runs the ``dreamgen`` command."""

from dreamgen_async.cli import main

if __name__ == "__main__":
    main()
