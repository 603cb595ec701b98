"""Runs a notebook top to bottom and writes the executed copy.

    python3 notebooks/run.py notebooks/compliance.ipynb OUT.ipynb

Parameters come from the environment (see the notebook's first cell). Exits
non-zero, naming the cell, when any cell fails. The test suite runs the
compliance notebook this way against a seeded server, so it cannot rot.
"""

import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main() -> int:
    source, target = sys.argv[1], sys.argv[2]
    notebook = nbformat.read(source, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3")
    try:
        client.execute()
    except CellExecutionError as error:
        nbformat.write(notebook, target)
        print(f"{source}: a cell failed:\n{error}", file=sys.stderr)
        return 1
    nbformat.write(notebook, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
