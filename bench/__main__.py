"""`python -m gradbench`, and `python -m bench` in the repository (whose bench/ is the installed gradbench):
the command line, gradbench.cli."""
import sys

from gradbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
