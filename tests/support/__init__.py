"""Helpers shared by the tests (``from support.runs import ...``): importable because pyproject.toml puts
``tests/`` on pytest's ``pythonpath``. Test modules import from here, never from one another."""
