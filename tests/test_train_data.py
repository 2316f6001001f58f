"""Training data and models at the edges: sources that cannot train a classifier are refused in
one line, classes missing from a split are reported, and an unreachable hub fails fast."""

from __future__ import annotations

import csv
import http.server
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medvit_edge.errors import UserError
from medvit_edge.io.labelled import read_labelled_set

from .conftest import needs_torch

OFFLINE_HINT = (
    "use --model tiny|small (random init, the from-scratch recipe by default) and a local --data "
    "folder or split CSV to train offline"
)


def _write_csv(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...] = ("path", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _phantoms(phantom_dir: Path, label: str, count: int) -> list[str]:
    rows = [r for r in read_labelled_set(phantom_dir, "train") if r.label == label]
    return [str(r.path) for r in rows[:count]]


def _prepare(data: str | Path):  # -> DataBundle
    from medvit_edge.train.config import TrainConfig
    from medvit_edge.train.prepare import prepare_data

    return prepare_data(TrainConfig(data=str(data)))


# --- sources that cannot train a classifier ------------------------------------------------------


def test_one_class_csv_is_refused(phantom_dir: Path, tmp_path: Path) -> None:
    data = _write_csv(tmp_path / "data.csv", [(p, "benign") for p in _phantoms(phantom_dir, "benign", 5)])
    with pytest.raises(
        UserError, match=r"data\.csv: only one class \('benign'\); a classifier needs at least 2"
    ):
        _prepare(data)


def test_empty_label_is_refused_with_its_row(phantom_dir: Path, tmp_path: Path) -> None:
    images = _phantoms(phantom_dir, "benign", 3) + _phantoms(phantom_dir, "normal", 3)
    rows = [(p, "benign" if i < 3 else "normal") for i, p in enumerate(images)]
    rows[4] = (rows[4][0], "  ")  # a blank cell, as spreadsheets leave them
    data = _write_csv(tmp_path / "data.csv", rows)
    with pytest.raises(UserError, match=r"data\.csv row 6: empty label for .*normal_0001\.png"):
        _prepare(data)


def test_class_folders_with_one_populated_class_are_refused(phantom_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "classes"
    (folder / "benign").mkdir(parents=True)
    (folder / "malignant").mkdir()  # present, but empty
    for path in _phantoms(phantom_dir, "benign", 3):
        (folder / "benign" / Path(path).name).symlink_to(path)
    with pytest.raises(UserError, match=r"classes: only one class \('benign'\)"):
        _prepare(folder)


@pytest.mark.parametrize("layout", ["empty", "class folders without images"])
def test_folder_without_images_is_refused(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    if layout != "empty":
        for label in ("benign", "malignant"):
            (folder / label).mkdir()
            (folder / label / "notes.txt").write_text("not an image")
    message = r"data: no images found \(expected one sub-folder per class, or a split CSV\)"
    with pytest.raises(UserError, match=message):
        _prepare(folder)


def test_csv_with_a_byte_order_mark_is_read_like_any_other(phantom_dir: Path, tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM; train reads CSVs only through medvit_edge.io.labelled."""
    rows = [(p, "benign") for p in _phantoms(phantom_dir, "benign", 4)]
    rows += [(p, "normal") for p in _phantoms(phantom_dir, "normal", 4)]
    data = _write_csv(tmp_path / "excel.csv", rows)
    data.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
    bundle = _prepare(data)
    assert bundle.labels == ["benign", "normal"] and len(bundle.samples) == 8


# --- a class missing from a split ----------------------------------------------------------------


@pytest.fixture()
def rare_class_csv(phantom_dir: Path, tmp_path: Path) -> Path:
    """10 benign, 10 malignant and a single normal image, no split: normal can only be in one."""
    rows = [(p, "benign") for p in _phantoms(phantom_dir, "benign", 10)]
    rows += [(p, "malignant") for p in _phantoms(phantom_dir, "malignant", 10)]
    rows += [(p, "normal") for p in _phantoms(phantom_dir, "normal", 1)]
    return _write_csv(tmp_path / "rare.csv", rows)


def test_class_missing_from_a_split_is_warned(rare_class_csv: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        bundle = _prepare(rare_class_csv)
    expected = ["class 'normal' has no images in validation", "class 'normal' has no images in test"]
    assert bundle.warnings == expected
    assert [s.split for s in bundle.samples if s.label == "normal"] == ["train"]
    shown = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert shown == expected


@needs_torch
def test_data_report_lists_the_warnings(rare_class_csv: Path, tmp_path: Path) -> None:
    from medvit_edge.train import TrainConfig, train

    run_dir = tmp_path / "run"
    cfg = TrainConfig(
        model="tiny",
        data=str(rare_class_csv),
        output=run_dir,
        epochs=1,
        max_steps=1,
        train_batch_size=8,
        eval_batch_size=16,
        dataloader_workers=0,
        progress=False,
    )
    train(cfg)
    report = json.loads((run_dir / "data_report.json").read_text(encoding="utf-8"))
    assert report["warnings"] == [
        "class 'normal' has no images in validation",
        "class 'normal' has no images in test",
    ]


def test_well_spread_data_has_no_warnings(phantom_dir: Path) -> None:
    assert _prepare(phantom_dir / "split.csv").warnings == []


# --- the hub ---------------------------------------------------------------------------------------


@pytest.fixture()
def requests_sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every HTTP request huggingface_hub, transformers and datasets send (all use requests)."""
    import requests

    sent: list[str] = []
    send = requests.Session.send

    def counting_send(self: requests.Session, request: requests.PreparedRequest, **kwargs: object) -> object:
        sent.append(str(request.url))
        return send(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", counting_send)
    return sent


@pytest.fixture()
def hub_at(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # -> Callable[[str], None]
    """Point every hub client at ``endpoint`` (online mode, empty caches): tests never touch the
    real hub, whatever network the machine has."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    try:
        from datasets import config

        monkeypatch.setattr(config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
        monkeypatch.setattr(config, "HF_HUB_OFFLINE", False)
    except ImportError:
        pass

    def point(endpoint: str) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        try:
            from datasets import config

            monkeypatch.setattr(config, "HF_ENDPOINT", endpoint)
        except ImportError:
            pass

    return point


@pytest.fixture()
def closed_port() -> str:
    """A local address nothing listens on: connecting is refused, as on a machine offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture()
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a black-holed network."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the http.server API names it
        body = b'{"error":"Repository not found"}'
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def not_found_server() -> Iterator[str]:
    """A hub that knows no repository (answers as huggingface.co does)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_unreachable_hub_dataset_fails_fast_in_one_request(hub_at, closed_port: str, requests_sent) -> None:
    """The default ``train``: datasets used to retry for ~25 s and end in a long traceback."""
    pytest.importorskip("datasets")
    hub_at(closed_port)
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        _prepare("emre570/breastcancer-ultrasound-images")
    assert time.monotonic() - started < 20
    assert len(requests_sent) == 1, requests_sent  # no retries
    assert str(error.value) == (
        "cannot reach the Hugging Face hub for 'emre570/breastcancer-ultrasound-images' (offline?): "
        + OFFLINE_HINT
    )


@needs_torch
def test_unreachable_hub_model_fails_fast_in_one_request(hub_at, closed_port: str, requests_sent) -> None:
    from medvit_edge.train.models import load_model

    hub_at(closed_port)
    started = time.monotonic()
    with pytest.raises(
        UserError, match=r"cannot reach the Hugging Face hub for 'google/vit-large-patch16-224'"
    ):
        load_model("google/vit-large-patch16-224", ["benign", "malignant"])
    assert time.monotonic() - started < 20
    assert len(requests_sent) == 1, requests_sent


def test_silent_hub_times_out_once(hub_at, silent_server: str, requests_sent, monkeypatch) -> None:
    """A black-holed network: one request that times out, not datasets' retries of 10 s each."""
    pytest.importorskip("datasets")
    from medvit_edge.train import hub

    hub_at(silent_server)
    monkeypatch.setattr(hub, "HUB_TIMEOUT_S", 0.5)
    started = time.monotonic()
    with pytest.raises(UserError, match=r"cannot reach the Hugging Face hub for 'emre570/breastcancer"):
        _prepare("emre570/breastcancer-ultrasound-images")
    assert time.monotonic() - started < 10
    assert len(requests_sent) == 1


@needs_torch
@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_mode_fails_at_once_without_a_request(
    hub_at, closed_port: str, requests_sent, monkeypatch, variable: str
) -> None:
    from medvit_edge.train.models import load_model

    hub_at(closed_port)
    monkeypatch.setenv(variable, "1")
    with pytest.raises(UserError, match=r"offline mode \(HF_HUB_OFFLINE\) is on and model 'google/vit-large"):
        load_model("google/vit-large-patch16-224", ["benign", "malignant"])
    assert requests_sent == []


def test_offline_dataset_fails_at_once_without_a_request(
    hub_at, closed_port, requests_sent, monkeypatch
) -> None:
    pytest.importorskip("datasets")
    hub_at(closed_port)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=re.escape(f"not in the local Hugging Face cache: {OFFLINE_HINT}")):
        _prepare("emre570/breastcancer-ultrasound-images")
    assert requests_sent == []


def _cache_model(cache: Path, repo_id: str) -> None:
    """The layout huggingface_hub leaves after downloading ``config.json``."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")


def test_cached_model_passes_offline_and_is_named_when_unreachable(
    hub_at, closed_port: str, requests_sent, monkeypatch, tmp_path: Path
) -> None:
    from medvit_edge.train.hub import ensure_hub_reachable

    hub_at(closed_port)
    _cache_model(tmp_path / "hub-cache", "google/vit-base-patch16-224")
    with pytest.raises(UserError, match="it is in the local cache, set HF_HUB_OFFLINE=1 to use that copy"):
        ensure_hub_reachable("google/vit-base-patch16-224", "model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests_sent.clear()
    ensure_hub_reachable("google/vit-base-patch16-224", "model")  # offline, from the cache
    assert requests_sent == []


def test_unknown_repository_is_one_line(hub_at, not_found_server: str, requests_sent) -> None:
    pytest.importorskip("datasets")
    hub_at(not_found_server)
    with pytest.raises(UserError) as error:
        _prepare("someone/no-such-dataset")
    assert str(error.value) == (
        "'someone/no-such-dataset': no such local file or folder, and no dataset of that name on the "
        "Hugging Face hub (a private one needs `hf auth login`)"
    )
    assert len(requests_sent) == 1


@pytest.mark.parametrize("typo", ["./busi-typo", "data/busi/split-typo.csv", "busi.csv", "~/no-such-data"])
def test_missing_local_data_is_not_a_hub_lookup(hub_at, closed_port: str, requests_sent, typo: str) -> None:
    hub_at(closed_port)
    with pytest.raises(UserError) as error:
        _prepare(typo)
    assert str(error.value) == f"{typo}: no such file or folder"
    assert requests_sent == []


@needs_torch
def test_model_folder_without_a_model_is_refused(tmp_path: Path, hub_at, closed_port, requests_sent) -> None:
    from medvit_edge.train.models import load_model

    hub_at(closed_port)
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(UserError, match=r"empty-run: not a model folder \(no config\.json\)"):
        load_model(str(empty), ["benign", "malignant"])
    with pytest.raises(UserError, match=r"^models/no-such-run/: no such file or folder$"):
        load_model("models/no-such-run/", ["benign", "malignant"])
    assert requests_sent == []


@pytest.mark.parametrize(
    ("value", "local"),
    [
        ("google/vit-large-patch16-224", False),
        ("emre570/breastcancer-ultrasound-images", False),
        ("mnist", False),
        ("data/busi/split.csv", True),
        ("./busi", True),
        ("../shared/data/busi", True),
        ("~/busi", True),
        ("/data/busi", True),
        ("busi.csv", True),
        (r"C:\data\busi", True),
    ],
)
def test_local_paths_are_told_from_hub_ids(value: str, local: bool) -> None:
    from medvit_edge.train.hub import looks_like_local_path

    assert looks_like_local_path(value) is local


def test_an_unreadable_image_in_the_data_is_skipped_and_named(phantom_dir: Path, tmp_path: Path) -> None:
    """One corrupt file among the training images once ended the run with a traceback."""
    from medvit_edge.train.config import TrainConfig
    from medvit_edge.train.prepare import prepare_data

    rows = (phantom_dir / "split.csv").read_text().splitlines()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    csv_path = tmp_path / "data.csv"
    absolute = [rows[0]] + [f"{phantom_dir / r.split(',')[0]},{','.join(r.split(',')[1:])}" for r in rows[1:]]
    csv_path.write_text("\n".join([*absolute, f"{broken},benign,train"]) + "\n")
    bundle = prepare_data(TrainConfig(data=str(csv_path)))
    assert len(bundle.samples) == len(rows) - 1
    assert all(s.path != broken for s in bundle.samples)
    assert any("broken.png" in w for w in bundle.leakage["warnings"])
    assert bundle.leakage["unreadable_images"][0].startswith(str(broken))
