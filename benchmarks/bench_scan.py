"""Selective-scan benchmark; same as ``vimtune bench scan`` (``--help`` lists the options)."""
from vimtune.bench.scan import main

raise SystemExit(main())
