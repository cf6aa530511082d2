"""``python -m connectome`` == the ``connectome`` command."""

import sys

from connectome.cli import main

if __name__ == "__main__":
    sys.exit(main())
