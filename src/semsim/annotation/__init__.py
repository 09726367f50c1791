"""Human annotation: collect recognizability judgments from many annotators (``semsim annotate``).

A SQLAlchemy database (SQLite in WAL mode, or any SQLAlchemy URL) holds the items (reconstructions of the
loaded sets), annotators (secret links, stored hashed), their randomised queues and answers; a FastAPI app
serves the task pages and the admin dashboard. One module per concern: ``db`` (tables), ``project`` (choices,
keys), ``loading`` (``init``), ``assignment`` (the pure balancing algorithm and its application),
``annotators``, ``sessions``, ``answers`` (checks, storage, undo), ``writer`` (group commit), ``dashboard``,
``agreement``, ``export`` and ``app``.
"""

from semsim.annotation.agreement import agreement, fleiss_kappa, krippendorff_alpha_nominal
from semsim.annotation.annotators import add_annotator, add_annotators, reissue, set_active
from semsim.annotation.answers import InvalidAnswer, submit_answer, undo_last
from semsim.annotation.assignment import assign
from semsim.annotation.dashboard import dashboard
from semsim.annotation.db import Database
from semsim.annotation.export import (
    export,
    export_folders,
    export_labels,
    export_labelstudio,
    import_labelstudio,
    label_table,
)
from semsim.annotation.loading import init_project
from semsim.annotation.project import NotAssigned, project_info

__all__ = [
    "Database", "InvalidAnswer", "NotAssigned", "add_annotator", "add_annotators", "agreement", "assign",
    "dashboard", "export", "export_folders", "export_labels", "export_labelstudio", "fleiss_kappa",
    "import_labelstudio", "init_project", "krippendorff_alpha_nominal", "label_table", "project_info",
    "reissue", "set_active", "submit_answer", "undo_last",
]
