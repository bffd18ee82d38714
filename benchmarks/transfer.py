"""Transfer benchmark; same as ``vimtune bench transfer`` (``--help`` lists the options)."""
from vimtune.bench.transfer import main

raise SystemExit(main())
