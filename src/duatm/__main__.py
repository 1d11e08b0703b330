"""``python -m duatm``: the command line, also as torchrun runs it
(``torchrun --nproc_per_node 4 -m duatm train ...``)."""

import sys

from duatm.cli import main

sys.exit(main())
