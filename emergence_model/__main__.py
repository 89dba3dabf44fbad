"""`python -m emergence_model COMMAND ...`: the same as the `emergence-model` console script."""

import sys

from emergence_model.commands import main

if __name__ == "__main__":
    sys.exit(main())
