"""Put the repository on the import path: the scripts run from a plain checkout, also where the
project cannot be installed (`pip install -e .`), e.g. a lent GPU machine without a network.
`python scripts/x.py` starts with scripts/ on the path, not the repository, so each script imports
this module first (`import _root`)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
