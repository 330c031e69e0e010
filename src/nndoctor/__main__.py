"""`python -m nndoctor ...` works like `nndoctor ...`."""
import sys

from .cli import main

sys.exit(main())
