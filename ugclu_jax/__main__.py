import sys

from ugclu_jax.cli import main
from ugclu_jax.host import keep_freed_host_memory

# Before JAX starts its threads: XLA's per-call host buffers stay in the process.
keep_freed_host_memory()
sys.exit(main())
