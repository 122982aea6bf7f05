"""``python -m h2gnet`` (and ``torchrun --nproc-per-node N -m h2gnet train-patch ...``): the command line."""

import sys

from h2gnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
