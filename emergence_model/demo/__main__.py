"""`python -m emergence_model.demo`: the demo's command, emergence_model/commands/demo.py.

python -m emergence_model.demo build            # a few minutes on 2 cores, then reused
python -m emergence_model.demo caches           # + caches for train.py, the study
"""

import sys

from emergence_model.commands.demo import main

if __name__ == "__main__":
    sys.exit(main())
