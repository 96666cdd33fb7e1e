"""`python -m hf_hyper.eval.retrieval` / `accelerate launch -m hf_hyper.eval.retrieval`."""

import sys

from .run import main

sys.exit(main())
