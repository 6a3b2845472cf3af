"""The local stack: real servers from the package registries, no Docker.

``servers`` starts and stops them (shared by ``make demo`` and the tests);
``python -m localstack`` brings the whole stack up for a person.
"""
