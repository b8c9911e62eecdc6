"""`python -m tfvae` runs the command line."""

import sys

from tfvae.cli import main

sys.exit(main())
