"""`driftline …` (the console script) and `python -m services.cli …`: runs a verb; a failure is
one line on stderr, `driftline: <what was wrong>`, and a non-zero exit, never a traceback
(DRIFTLINE_DEBUG=1 shows one for an unexpected error)."""

from __future__ import annotations

import os
import sys

import click


def main(argv: list[str] | None = None) -> int:
    from .app import app
    from .errors import CliError

    import typer.main

    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="driftline", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except CliError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return exc.code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("driftline: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("DRIFTLINE_DEBUG"):
            raise
        print(f"driftline: unexpected {type(exc).__name__}: {exc} (DRIFTLINE_DEBUG=1 shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
