"""``python -m offclip.pipeline.classifier [OPTIONS]`` runs ``offclip classifier train [OPTIONS]``.

The one command line is Typer's (offclip/cli.py): ``offclip classifier train`` and ``offclip
classifier evaluate``; this entry point only delegates to the first, for scripts that ran the
module directly.
"""

import sys

import typer

from offclip.cli import classifier_app

if __name__ == "__main__":
    train = typer.main.get_command(classifier_app).commands["train"]
    train.main(args=sys.argv[1:], prog_name="python -m offclip.pipeline.classifier")
