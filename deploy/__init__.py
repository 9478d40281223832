"""Deployment files shipped inside gridwatt as package data, under the import name ``gridwatt.deploy``.

setuptools maps ``gridwatt.deploy`` onto this ``deploy/`` folder (``[tool.setuptools] package-dir``
in pyproject.toml), so the example configs, the systemd units and the demo's grid data live in one
place: the files here are the ones installed. Read them with :func:`gridwatt.resources.deploy_file`.
"""
