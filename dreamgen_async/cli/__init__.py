"""The ``dreamgen`` command: a thin layer over :class:`DreamGenerator`.

Exit status: 0 when every job succeeded, 1 when any failed (or the server could not be
used), 2 for usage errors (bad options, a bad ``--server`` URL, ``-o`` naming a file), 3 when
every job ran but the server dropped some of their outputs (a partial prompt: 200 with
``node_errors``; a warning line per job names them), 130 after Ctrl-C (our pending prompts
are taken off the server and no half-written file remains).

Output: stdout has one line per job (``ok LABEL -> FILES (seed N)``, or a JSON record with
``--json``) and nothing else; errors, warnings and the summary go to stderr. Lines are never
wrapped, whatever the terminal width.

The package: :mod:`.options` (option groups, parsing, usage checks), :mod:`.display` (what
is printed), :mod:`.runner` (a batch run and its exit status), :mod:`.commands` (the click
commands). ``dreamgen = "dreamgen_async.cli:main"`` is the console script.
"""

from dreamgen_async.cli.commands import cli, main

__all__ = ["cli", "main"]
