import sys

from ugclu_jax.cli import main

sys.exit(main())
