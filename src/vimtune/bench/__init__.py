"""Benchmarks behind ``vimtune bench NAME`` (each module: ``main(argv) -> int``)."""
