"""Prefect flows: the only place with ``@flow``/``@task``. Tasks call pipeline/ or model/ and pass URLs."""
