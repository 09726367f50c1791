"""Human annotation: collect recognizability judgments from many annotators (``semsim annotate``).

A SQLAlchemy database (SQLite in WAL mode, or any SQLAlchemy URL) holds the items (reconstructions of the
loaded sets), annotators (secret links, stored hashed), their randomised queues and answers; a FastAPI app
serves the task pages and the admin dashboard; agreement statistics and exports live in their own modules.
"""

from semsim.annotation.agreement import agreement, fleiss_kappa, krippendorff_alpha_nominal
from semsim.annotation.db import Database
from semsim.annotation.export import (
    export,
    export_folders,
    export_labels,
    export_labelstudio,
    import_labelstudio,
    label_table,
)
from semsim.annotation.store import (
    NotAssigned,
    add_annotator,
    add_annotators,
    assign,
    dashboard,
    init_project,
    project_info,
    submit_answer,
    undo_last,
)

__all__ = [
    "Database", "NotAssigned", "add_annotator", "add_annotators", "agreement", "assign", "dashboard",
    "export", "export_folders", "export_labels", "export_labelstudio", "fleiss_kappa", "import_labelstudio",
    "init_project", "krippendorff_alpha_nominal", "label_table", "project_info", "submit_answer", "undo_last",
]
