"""The options and arguments more than one command takes, each declared once.

Metavars are the names docs/cli.md gives them (tests/test_docs.py), not Typer's
types, and a declaration changed here changes every command's --help alike.
"""

from __future__ import annotations

from typing import Annotated

import typer

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Tenant = Annotated[str, typer.Argument(metavar="TENANT")]
Subject = Annotated[str, typer.Argument(metavar="SUBJECT")]
