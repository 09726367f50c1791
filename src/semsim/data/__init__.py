"""Images, reconstruction sets (manifests) and datasets."""

from semsim.data.images import load_image, load_images, save_image
from semsim.data.sets import ingest, read_manifest, resolve_paths, write_manifest

__all__ = ["load_image", "load_images", "save_image", "ingest", "read_manifest", "resolve_paths", "write_manifest"]
