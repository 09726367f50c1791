"""semsim: assess privacy leakage in images reconstructed by attacks on ML models.

The package follows the pipeline: ``data`` (images, reconstruction sets, datasets), ``models`` (networks),
``attacks``, ``metrics``, ``learned`` (the SemSim embedding and its training), ``annotation``, ``analysis``,
``grid``, and ``cli`` (a thin layer over the Python API).
"""

__version__ = "0.1.0"
