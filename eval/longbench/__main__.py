"""`python -m hf_hyper.eval.longbench` / `accelerate launch -m hf_hyper.eval.longbench`."""

import sys

from .run import main

sys.exit(main())
