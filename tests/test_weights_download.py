"""Fetching pretrained weights on first use: a local HTTP server on 127.0.0.1 stands in for the publishers.

Checked: the download lands in the torch hub cache and is found afterwards without the network; a file whose
SHA-256 does not start with the published prefix is refused and nothing is left behind; SEMSIM_OFFLINE=1 sends
no request and says how to fetch; an unreachable server gives a one-line message; LPIPS builds end to end from
downloads (the real LPIPS v0.1 heads, checked against their published SHA-256).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from helpers import shared_path
from semsim.errors import MetricUnavailable
from semsim.metrics import create
from semsim.metrics import lpips as lpips_module
from semsim.models import weights
from semsim.models.backbones import lpips_backbone
from semsim.models.weights import Download, fetch_weights


class _Server:
    """A static file server on 127.0.0.1 (port 0: any free port) that records the paths requested."""

    def __init__(self, folder: Path) -> None:
        requests: list[str] = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                requests.append(self.path)

        self.requests = requests
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch) -> Iterator[tuple[_Server, Path, Path]]:
    """(server, the folder it serves, the torch hub checkpoint folder), downloads allowed and redirected."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = _Server(folder)
    monkeypatch.setattr(weights, "_BASE_URL_FOR_TESTS", server.url)
    monkeypatch.delenv(weights.OFFLINE_ENV, raising=False)
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield server, folder, tmp_path / "torch" / "hub" / "checkpoints"
    server.close()


def _publish(folder: Path, name: str, payload: bytes) -> Download:
    """Serve ``payload`` as ``name``; the Download names the publisher's URL and the true SHA-256 prefix."""
    (folder / name).write_bytes(payload)
    return Download(f"https://publisher.example/models/{name}", sha256=hashlib.sha256(payload).hexdigest()[:8])


def test_hash_prefix_comes_from_torchvision_style_names():
    assert Download("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth").sha256 == "7be5be79"
    fid = Download("https://github.com/x/releases/download/w/pt_inception-2015-12-05-6726825d.pth")
    assert fid.sha256 == "6726825d" and fid.name == "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(ValueError, match="no SHA-256 prefix"):
        Download("https://example.org/alex.pth")


def test_fetch_on_first_use_then_found_offline(served, monkeypatch):
    server, folder, hub = served
    state = {"w": torch.arange(6.0)}
    torch.save(state, folder / "tmp.pth")
    source = _publish(folder, "tiny-net.pth", (folder / "tmp.pth").read_bytes())
    path = fetch_weights(["tiny-net.pth"], "tiny net", download=source)
    assert path == hub / "tiny-net.pth" and path.read_bytes() == (folder / "tiny-net.pth").read_bytes()
    assert server.requests == ["/tiny-net.pth"]
    assert sorted(p.name for p in hub.iterdir()) == ["tiny-net.pth"]  # no temporary file left
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")  # the cached copy is found without any request
    assert fetch_weights(["tiny-net.pth"], "tiny net", download=source) == path
    assert len(server.requests) == 1
    assert torch.equal(weights.load_state_dict(path)["w"], state["w"])


def test_wrong_hash_is_refused_and_nothing_is_left(served):
    server, folder, hub = served
    (folder / "alexnet-owt-7be5be79.pth").write_bytes(b"not the published file" * 100)
    source = Download("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth")
    with pytest.raises(MetricUnavailable, match="not the published 7be5be79") as err:
        fetch_weights(["alexnet-owt-7be5be79.pth"], "LPIPS-alex backbone", download=source)
    assert "\n" not in str(err.value) and "discarded" in str(err.value)
    assert server.requests == ["/alexnet-owt-7be5be79.pth"]
    assert not hub.exists() or not any(hub.iterdir())


def test_offline_mode_sends_no_request_and_says_how_to_fetch(served, monkeypatch):
    server, folder, hub = served
    source = _publish(folder, "tiny-net.pth", b"payload")
    for value in ("1", "true", "yes"):
        monkeypatch.setenv(weights.OFFLINE_ENV, value)
        with pytest.raises(MetricUnavailable, match="downloads are off") as err:
            fetch_weights(["tiny-net.pth"], "tiny net", download=source)
        message = str(err.value)
        assert f"put tiny-net.pth in {hub}" in message and source.url in message and "\n" not in message
    assert server.requests == [] and not hub.exists()
    monkeypatch.setenv(weights.OFFLINE_ENV, "0")  # 0 means downloads allowed
    assert fetch_weights(["tiny-net.pth"], "tiny net", download=source).read_bytes() == b"payload"


def test_unreachable_server_and_missing_file_give_one_line(served, monkeypatch):
    server, folder, hub = served
    source = Download("https://publisher.example/models/absent-0123abcd.pth")
    with pytest.raises(MetricUnavailable, match="download from .*absent-0123abcd.pth failed .HTTP 404"):
        fetch_weights(["absent-0123abcd.pth"], "absent net", download=source)
    server.close()
    with pytest.raises(MetricUnavailable, match="failed") as err:
        fetch_weights(["absent-0123abcd.pth"], "absent net", download=source)
    assert "\n" not in str(err.value) and f"in {hub} by hand" in str(err.value)
    assert not hub.exists() or not any(hub.iterdir())


def test_explicit_paths_never_download(served, tmp_path):
    server, folder, _ = served
    source = _publish(folder, "tiny-net.pth", b"payload")
    with pytest.raises(MetricUnavailable, match="no such weight file"):
        fetch_weights(["tiny-net.pth"], "tiny net", tmp_path / "nowhere.pth", download=source)
    assert server.requests == []


def test_lpips_builds_from_downloads_with_the_published_head_hashes(served, monkeypatch):
    server, folder, hub = served
    torch.manual_seed(0)
    backbone = {f"features.{k}": v for k, v in lpips_backbone("squeeze").features.state_dict().items()}
    torch.save(backbone, folder / "squeezenet1_1-b8a52dc0.pth")  # random weights: their own hash, not torchvision's
    real = lpips_module.BACKBONE_DOWNLOADS["squeeze"]
    digest = hashlib.sha256((folder / "squeezenet1_1-b8a52dc0.pth").read_bytes()).hexdigest()
    monkeypatch.setitem(lpips_module.BACKBONE_DOWNLOADS, "squeeze", Download(real.url, sha256=digest[:8]))
    (folder / "squeeze.pth").write_bytes(shared_path("lpips_linear_weights", "v0.1", "squeeze.pth").read_bytes())
    metric = create("lpips_squeeze")
    assert sorted(server.requests) == ["/squeeze.pth", "/squeezenet1_1-b8a52dc0.pth"]
    assert (hub / "lpips" / "v0.1" / "squeeze.pth").is_file() and (hub / "squeezenet1_1-b8a52dc0.pth").is_file()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert metric(x, x.flip(0)).shape == (2,)
    # a changed head file is refused by its full published SHA-256
    (folder / "alex.pth").write_bytes(b"tampered")
    with pytest.raises(MetricUnavailable, match="not the published df73285e"):
        fetch_weights(lpips_module.lin_file_names("alex"), "LPIPS-alex linear heads",
                      download=lpips_module.LIN_DOWNLOADS["alex"])
