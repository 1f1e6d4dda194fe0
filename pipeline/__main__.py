"""`python -m pipeline`: the job (`pipeline.job.launcher`; `--help` lists its options)."""

import sys

from pipeline.job.launcher import main

if __name__ == "__main__":
    sys.exit(main())
