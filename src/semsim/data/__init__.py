"""Images, reconstruction sets (manifests), datasets and label tables.

Names are imported on first use: reading a manifest or a label table needs no torch.
"""

from semsim.common.lazy import lazy_exports

_EXPORTS = {"load_image": "images", "load_images": "images", "save_image": "images", "ingest": "sets",
            "read_manifest": "sets", "resolve_paths": "sets", "write_manifest": "sets"}

__all__ = ["load_image", "load_images", "save_image", "ingest", "read_manifest", "resolve_paths", "write_manifest"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
