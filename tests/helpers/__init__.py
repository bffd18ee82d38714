"""Helpers shared by the test modules (not collected by pytest: no ``test_`` prefix).

``pyproject.toml`` puts ``tests/`` on ``sys.path`` (pytest's ``pythonpath`` option), so test modules
import these as ``helpers.<module>`` under every ``--import-mode``.
"""
