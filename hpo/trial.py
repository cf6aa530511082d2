"""``python -m hpo.trial COMMANDS.json``: run a trial's ``connectome`` commands (a JSON list of
argv lists) one after the other in this one process (one TensorFlow start-up per trial), through
the same entry point as the command line; stop at the first that fails and exit with its code."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from connectome.cli import main as connectome

    for cmd in json.loads(Path(argv[0]).read_text()):
        print("$ connectome " + shlex.join(cmd), flush=True)
        rc = connectome(cmd)
        sys.stdout.flush()
        sys.stderr.flush()
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
