"""Build the offline demo suite, and its caches, from the command line.

    python -m emergence_model.demo build            # a few minutes on 2 cores, then reused
    python -m emergence_model.demo caches           # + caches for train.py, the study

The same command as `emergence-model demo`: emergence_model/commands/demo.py.
"""

import sys

from emergence_model.commands.demo import main

if __name__ == "__main__":
    sys.exit(main())
