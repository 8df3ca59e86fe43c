"""Tests for samsparse.checkpoints: registry, resumable verified download, safe loading.

Network access is only to a threaded loopback HTTP server on 127.0.0.1 (port 0).
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from samsparse.checkpoints import (
    CHECKPOINTS,
    CheckpointInfo,
    CheckpointLoadError,
    ChecksumError,
    DownloadError,
    build_image_encoder_from_state_dict,
    build_sam_from_state_dict,
    build_tiny_sam,
    cache_dir,
    download,
    get_checkpoint_info,
    infer_decoder_config,
    infer_encoder_config,
    infer_model_type,
    list_checkpoints,
    load_checkpoint,
    load_state_dict,
    save_checkpoint,
)

TIMEOUT = 5.0  # seconds for every loopback request

# --------------------------------------------------------------------------------------
# Loopback HTTP server
# --------------------------------------------------------------------------------------


@dataclass
class ServerState:
    payload: bytes
    ignore_range: bool = False
    cut_after: int | None = None  # close the connection after sending this many body bytes
    fail_status: int | None = None  # answer every request with this HTTP error
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(http.server.BaseHTTPRequestHandler):

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802
        st = self.server.state  # type: ignore[attr-defined]
        if st.fail_status is not None:
            self.send_error(st.fail_status)
            return
        data = st.payload
        rng = self.headers.get("Range")
        start = 0
        status = 200
        if rng and not st.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            assert m, rng
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                with st.lock:
                    st.requests.append({"range": rng, "status": 416, "sent": 0})
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if st.cut_after is not None:
            body = body[: st.cut_after]
        # recorded before the body goes out: the client can finish reading (and a test look at the
        # requests) before this thread runs again after its last write
        record = {"range": rng, "status": status, "sent": len(body)}
        with st.lock:
            st.requests.append(record)
        sent = 0
        try:
            for i in range(0, len(body), 4096):
                self.wfile.write(body[i : i + 4096])
                sent += len(body[i : i + 4096])
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            with st.lock:
                record["sent"] = sent
        if st.cut_after is not None:
            self.close_connection = True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: ServerState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state

    @property
    def url_base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


PAYLOAD = os.urandom(300_000)  # served in 4 KiB writes


@pytest.fixture
def server():
    srv = _Server(ServerState(payload=PAYLOAD))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _info(srv: _Server, payload: bytes = PAYLOAD, *, sha: str | None = "auto", size: int | None = -1) -> CheckpointInfo:
    return CheckpointInfo(
        name="test",
        model_type="custom",
        url=srv.url_base + "ckpt.pth",
        filename="ckpt.pth",
        sha256=hashlib.sha256(payload).hexdigest() if sha == "auto" else sha,
        size=len(payload) if size == -1 else size,
    )


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


def test_registry_entries():
    assert list_checkpoints() == ["vit_b", "vit_h", "vit_l"]
    sizes = {"vit_h": 2564550879, "vit_l": 1249524607, "vit_b": 375042383}
    for name, info in CHECKPOINTS.items():
        assert info.model_type == name
        assert info.url == "https://dl.fbaipublicfiles.com/segment_anything/" + info.filename
        assert info.size == sizes[name]
        assert info.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", info.sha256)
    assert get_checkpoint_info("sam_vit_b") is CHECKPOINTS["vit_b"]
    assert get_checkpoint_info("VIT_L") is CHECKPOINTS["vit_l"]
    assert get_checkpoint_info("sam_vit_h_4b8939.pth") is CHECKPOINTS["vit_h"]
    with pytest.raises(ValueError, match="vit_b, vit_h, vit_l"):
        get_checkpoint_info("vit_x")
    with pytest.raises(ValueError, match="sha256"):
        CheckpointInfo("x", "custom", "http://h/x", "x", "nothex", 1)


# --------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------


def test_download_with_progress_bar(server, tmp_path, capsys):
    path = download(_info(server), dest_dir=tmp_path, progress=True, timeout=TIMEOUT)
    assert path == tmp_path / "ckpt.pth"
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "ckpt.pth.part").exists()
    err = capsys.readouterr().err
    assert "ckpt.pth" in err and "100%" in err  # tqdm bar written to stderr
    assert [r["range"] for r in server.state.requests] == [None]


def test_download_progress_callback_and_quiet(server, tmp_path, capsys):
    calls: list[tuple[int, int | None]] = []
    download(_info(server), dest_dir=tmp_path, progress=lambda d, t: calls.append((d, t)), timeout=TIMEOUT)
    assert calls and calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))
    assert capsys.readouterr().err == ""


def test_resume_from_partial_file(server, tmp_path):
    k = 123_457
    (tmp_path / "ckpt.pth.part").write_bytes(PAYLOAD[:k])
    path = download(_info(server), dest_dir=tmp_path, progress=False, timeout=TIMEOUT)
    assert path.read_bytes() == PAYLOAD
    (req,) = server.state.requests
    assert req["range"] == f"bytes={k}-"
    assert req["status"] == 206
    assert req["sent"] == len(PAYLOAD) - k  # only the remainder travelled


def test_interrupted_download_keeps_part_then_resumes(server, tmp_path):
    server.state.cut_after = 100_000
    with pytest.raises(DownloadError, match="resumes"):
        download(_info(server), dest_dir=tmp_path, progress=False, timeout=TIMEOUT)
    part = tmp_path / "ckpt.pth.part"
    assert part.stat().st_size == 100_000
    assert not (tmp_path / "ckpt.pth").exists()
    server.state.cut_after = None
    path = download(_info(server), dest_dir=tmp_path, progress=False, timeout=TIMEOUT)
    assert path.read_bytes() == PAYLOAD
    assert server.state.requests[-1]["range"] == "bytes=100000-"
    assert server.state.requests[-1]["sent"] == len(PAYLOAD) - 100_000


def test_server_ignoring_range_restarts_cleanly(server, tmp_path, caplog):
    server.state.ignore_range = True
    (tmp_path / "ckpt.pth.part").write_bytes(b"\x00" * 5000)  # even a wrong prefix is discarded
    with caplog.at_level(logging.INFO, logger="samsparse.checkpoints.download"):
        path = download(_info(server), dest_dir=tmp_path, progress=False, timeout=TIMEOUT)
    assert path.read_bytes() == PAYLOAD
    (req,) = server.state.requests
    assert req["range"] == "bytes=5000-" and req["status"] == 200 and req["sent"] == len(PAYLOAD)
    assert "ignored the Range" in caplog.text


def test_complete_part_file_needs_no_network(tmp_path):
    (tmp_path / "ckpt.pth.part").write_bytes(PAYLOAD)
    info = CheckpointInfo("t", "custom", "http://127.0.0.1:9/x", "ckpt.pth",
                          hashlib.sha256(PAYLOAD).hexdigest(), len(PAYLOAD))
    assert download(info, dest_dir=tmp_path, progress=False, timeout=TIMEOUT).read_bytes() == PAYLOAD


def test_hash_mismatch_raises_and_leaves_no_file(server, tmp_path):
    info = _info(server, sha="0" * 64)
    with pytest.raises(ChecksumError, match="SHA-256 mismatch") as exc:
        download(info, dest_dir=tmp_path, progress=False, timeout=TIMEOUT)
    assert isinstance(exc.value, ValueError)
    assert hashlib.sha256(PAYLOAD).hexdigest() in str(exc.value)
    assert not (tmp_path / "ckpt.pth").exists()
    assert not (tmp_path / "ckpt.pth.part").exists()


def test_size_mismatch_raises_checksum_error(server, tmp_path):
    info = _info(server, sha=None, size=len(PAYLOAD) + 10)  # server sends fewer bytes: incomplete
    with pytest.raises(DownloadError):
        download(info, dest_dir=tmp_path, progress=False, timeout=TIMEOUT)
    info = _info(server, sha=None, size=len(PAYLOAD) - 10)  # server sends more: wrong file
    for p in tmp_path.iterdir():
        p.unlink()
    with pytest.raises(ChecksumError, match="expected"):
        download(info, dest_dir=tmp_path, progress=False, timeout=TIMEOUT)
    assert list(tmp_path.iterdir()) == []


def test_no_pinned_hash_warns(server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="samsparse.checkpoints.download"):
        path = download(_info(server, sha=None), dest_dir=tmp_path, progress=False, timeout=TIMEOUT)
    assert path.read_bytes() == PAYLOAD
    assert "No SHA-256 is pinned" in caplog.text


def test_connection_refused_gives_download_error(tmp_path):
    with socket.socket() as s:  # find a free port, then close it: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "sam_vit_b_01ec64.pth.part").write_bytes(b"abc")
    with pytest.raises(DownloadError) as exc:
        download("vit_b", dest_dir=tmp_path, url=f"http://127.0.0.1:{port}/x.pth", progress=False, timeout=TIMEOUT)
    msg = str(exc.value)
    assert isinstance(exc.value, RuntimeError)
    assert "samsparse.load('/path/to/sam_vit_b_01ec64.pth')" in msg
    assert "--checkpoint" in msg and "manually" in msg
    assert (tmp_path / "sam_vit_b_01ec64.pth.part").read_bytes() == b"abc"  # kept for resume


def test_http_error_gives_download_error(server, tmp_path):
    server.state.fail_status = 404
    info = CheckpointInfo("t", "custom", server.url_base + "missing.pth", "missing.pth", None, None)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(info, dest_dir=tmp_path, progress=False, timeout=TIMEOUT)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_not_downloaded_again(server, tmp_path):
    info = _info(server)
    download(info, dest_dir=tmp_path, progress=False, timeout=TIMEOUT)
    assert len(server.state.requests) == 1
    mtime = (tmp_path / "ckpt.pth").stat().st_mtime_ns
    download(info, dest_dir=tmp_path, progress=False, timeout=TIMEOUT)
    assert len(server.state.requests) == 1
    assert (tmp_path / "ckpt.pth").stat().st_mtime_ns == mtime
    # Also without the verification sidecar (file placed by hand): hashed, not fetched.
    (tmp_path / "ckpt.pth.sha256").unlink()
    download(info, dest_dir=tmp_path, progress=False, timeout=TIMEOUT)
    assert len(server.state.requests) == 1
    # A corrupt file of the right size is replaced; force=True always re-downloads.
    (tmp_path / "ckpt.pth").write_bytes(b"\x00" * len(PAYLOAD))
    (tmp_path / "ckpt.pth.sha256").unlink()
    assert download(info, dest_dir=tmp_path, progress=False, timeout=TIMEOUT).read_bytes() == PAYLOAD
    assert len(server.state.requests) == 2
    download(info, dest_dir=tmp_path, progress=False, force=True, timeout=TIMEOUT)
    assert len(server.state.requests) == 3


def test_samsparse_home_respected(server, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("SAMSPARSE_HOME", str(home))
    assert cache_dir() == home
    path = download(_info(server), progress=False, timeout=TIMEOUT)
    assert path == home / "ckpt.pth" and path.read_bytes() == PAYLOAD
    monkeypatch.delenv("SAMSPARSE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "samsparse"


# --------------------------------------------------------------------------------------
# Loading / inference / building
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_sam()


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_tiny_sam_is_deterministic_and_exercises_rel_pos(tiny):
    again = build_tiny_sam()
    _assert_same_tensors(tiny.state_dict(), again.state_dict())
    other = build_tiny_sam(seed=1)
    assert not torch.equal(tiny.image_encoder.pos_embed, other.image_encoder.pos_embed)
    blk0, blk1 = tiny.image_encoder.blocks
    assert blk0.window_size == 4 and blk1.window_size == 0
    assert blk0.attn.rel_pos_h.shape == (7, 32) and blk1.attn.rel_pos_h.shape == (15, 32)
    assert blk0.attn.rel_pos_h.abs().sum() > 0
    state = torch.random.get_rng_state()
    build_tiny_sam(seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_state_dict_round_trip(tiny, tmp_path):
    p = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), p)
    sd = load_state_dict(p)
    _assert_same_tensors(sd, tiny.state_dict())
    assert all(v.device.type == "cpu" for v in sd.values())
    sd2, cfg = load_checkpoint(p)
    assert cfg is None


def test_module_prefix_stripped_and_model_wrapper(tiny, tmp_path):
    ref = tiny.state_dict()
    p1 = tmp_path / "dp.pth"
    torch.save({"module." + k: v for k, v in ref.items()}, p1)
    _assert_same_tensors(load_state_dict(p1), ref)
    p2 = tmp_path / "wrapped.pth"
    torch.save({"model": ref, "epoch": 3, "optimizer": {"lr": 1e-3}}, p2)
    _assert_same_tensors(load_state_dict(p2), ref)
    p3 = tmp_path / "wrapped_sd.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in ref.items()}}, p3)
    _assert_same_tensors(load_state_dict(p3), ref)


def test_samsparse_config_entry(tiny, tmp_path):
    cfg = {"block_size": 64, "sparsity": 0.5, "layers": [0, 1], "extra": {"name": "x", "on": True, "v": None}}
    p = save_checkpoint(tmp_path / "s.pth", tiny.state_dict(), cfg)
    sd, got = load_checkpoint(p)
    assert got == cfg
    _assert_same_tensors(sd, tiny.state_dict())
    # Raw dict with a samsparse entry next to the tensors also works.
    p2 = tmp_path / "raw.pth"
    torch.save({**tiny.state_dict(), "samsparse": cfg}, p2)
    sd2, got2 = load_checkpoint(p2)
    assert got2 == cfg and "samsparse" not in sd2
    with pytest.raises(TypeError, match="samsparse_config"):
        save_checkpoint(tmp_path / "bad.pth", tiny.state_dict(), {"obj": object()})
    # The rebuilt model ignores unknown config keys.
    build_sam_from_state_dict(sd, got)


def test_garbage_files_give_clear_errors(tmp_path, tiny):
    txt = tmp_path / "notes.pth"
    txt.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointLoadError, match="not a PyTorch checkpoint") as exc:
        load_state_dict(txt)
    assert isinstance(exc.value, ValueError)
    good = tmp_path / "good.pth"
    torch.save(tiny.state_dict(), good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointLoadError, match="not a PyTorch checkpoint"):
        load_state_dict(trunc)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointLoadError, match="not a PyTorch checkpoint"):
        load_state_dict(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pth")
    no_tensors = tmp_path / "nt.pth"
    torch.save({"epoch": 1, "lr": 0.1}, no_tensors)
    with pytest.raises(CheckpointLoadError, match="no tensors"):
        load_state_dict(no_tensors)
    listfile = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listfile)
    with pytest.raises(CheckpointLoadError, match="not a dict"):
        load_state_dict(listfile)


def test_python_objects_refused_by_weights_only(tmp_path, tiny):
    p = tmp_path / "obj.pth"
    torch.save({"model": tiny.state_dict(), "args": logging.Formatter()}, p)
    with pytest.raises(CheckpointLoadError, match="weights_only"):
        load_state_dict(p)


@pytest.fixture(scope="module")
def meta_state_dicts():
    from segment_anything import sam_model_registry

    out = {}
    for name in ("vit_b", "vit_l", "vit_h"):
        with torch.device("meta"):
            sam = sam_model_registry[name]()
        out[name] = sam.state_dict()
    return out


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_infer_official_model_types(meta_state_dicts, name):
    sd = meta_state_dicts[name]
    assert next(iter(sd.values())).device.type == "meta"
    assert infer_model_type(sd) == name
    enc = {k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}
    assert infer_model_type(enc) == name  # bare ImageEncoderViT
    assert infer_model_type({"module." + k: v for k, v in sd.items()}) == name
    cfg = infer_encoder_config(sd)
    ref = {"vit_b": (768, 12, 12, (2, 5, 8, 11)), "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
           "vit_h": (1280, 32, 16, (7, 15, 23, 31))}[name]
    assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["global_attn_indexes"]) == ref
    assert (cfg["img_size"], cfg["window_size"], cfg["out_chans"], cfg["mlp_ratio"]) == (1024, 14, 256, 4.0)
    dec = infer_decoder_config(sd)
    assert (dec["prompt_embed_dim"], dec["decoder_depth"], dec["decoder_mlp_dim"], dec["decoder_num_heads"]) == (256, 2, 2048, 8)
    assert (dec["mask_in_chans"], dec["iou_head_hidden_dim"], dec["num_multimask_outputs"]) == (16, 256, 3)


def test_infer_rejects_non_sam_dict():
    with pytest.raises(ValueError, match="patch_embed"):
        infer_model_type({"fc.weight": torch.zeros(2, 2)})


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(embed_dim=64, depth=4, num_heads=4, img_size=256, window_size=7, global_attn_indexes=(1, 3), seed=1),
        dict(embed_dim=48, depth=3, num_heads=3, img_size=160, window_size=5, global_attn_indexes=(2,), seed=2,
             mlp_ratio=2.0, prompt_dim=16, decoder_mlp_dim=24, decoder_depth=1, mask_in_chans=4),
        dict(embed_dim=64, depth=2, num_heads=2, img_size=128, window_size=0, global_attn_indexes=(), seed=3),
    ],
)
def test_custom_config_inferred_exactly_and_rebuilt(kw):
    sam = build_tiny_sam(**kw)
    sd = sam.state_dict()
    cfg = infer_encoder_config(sd)
    exp = dict(embed_dim=64, depth=2, num_heads=2, img_size=128, window_size=4, global_attn_indexes=(1,),
               out_chans=32, mlp_ratio=4.0)
    exp.update({k: v for k, v in kw.items() if k in exp})
    if "prompt_dim" in kw:
        exp["out_chans"] = kw["prompt_dim"]
    if exp["window_size"] == 0:  # all blocks global
        exp["global_attn_indexes"] = tuple(range(exp["depth"]))
    assert {k: cfg[k] for k in exp} == exp
    assert infer_model_type(sd) == "custom"

    rebuilt = build_sam_from_state_dict(sd)
    _assert_same_tensors(rebuilt.state_dict(), sd)
    assert not rebuilt.training
    size = exp["img_size"]
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, size - 16, size, generator=g) * 255
    batch = [{
        "image": image,
        "original_size": (size - 16, size),
        "point_coords": torch.tensor([[[20.0, 30.0], [60.0, 50.0]]]),
        "point_labels": torch.tensor([[1, 0]]),
    }]
    with torch.no_grad():
        out_a = sam(batch, multimask_output=True)[0]
        out_b = rebuilt(batch, multimask_output=True)[0]
        emb_a = sam.image_encoder(torch.randn(1, 3, size, size, generator=g))
    g = torch.Generator().manual_seed(0)
    torch.rand(3, size - 16, size, generator=g)
    with torch.no_grad():
        emb_b = rebuilt.image_encoder(torch.randn(1, 3, size, size, generator=g))
    assert torch.equal(emb_a, emb_b)
    assert torch.equal(out_a["low_res_logits"], out_b["low_res_logits"])
    assert torch.equal(out_a["iou_predictions"], out_b["iou_predictions"])

    enc = build_image_encoder_from_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(enc(torch.ones(1, 3, size, size)), sam.image_encoder(torch.ones(1, 3, size, size)))


def test_round_trip_through_file_and_rebuild(tiny, tmp_path):
    p = tmp_path / "ddp.pth"
    torch.save({"model": {"module." + k: v for k, v in tiny.state_dict().items()}}, p)
    rebuilt = build_sam_from_state_dict(load_state_dict(p))
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(rebuilt.image_encoder(x), tiny.image_encoder(x))


def test_wrong_keys_raise_value_error_naming_keys(tiny):
    sd = dict(tiny.state_dict())
    sd["image_encoder.blocks.0.attn.extra_weight"] = torch.zeros(3)
    del sd["mask_decoder.iou_token.weight"]
    with pytest.raises(ValueError) as exc:
        build_sam_from_state_dict(sd)
    msg = str(exc.value)
    assert "image_encoder.blocks.0.attn.extra_weight" in msg
    assert "mask_decoder.iou_token.weight" in msg
    assert "'custom'" in msg and "Hint" in msg

    sd = dict(tiny.state_dict())
    sd["image_encoder.blocks.0.norm1.weight"] = torch.zeros(65)
    with pytest.raises(ValueError, match="blocks.0.norm1.weight"):
        build_sam_from_state_dict(sd)

    enc_only = {k[len("image_encoder."):]: v for k, v in tiny.state_dict().items() if k.startswith("image_encoder.")}
    with pytest.raises(ValueError, match="build_image_encoder_from_state_dict"):
        build_sam_from_state_dict(enc_only)


def test_official_layout_error_mentions_model_type(meta_state_dicts):
    sd = dict(meta_state_dicts["vit_b"])
    sd.pop("image_encoder.neck.1.weight")
    with pytest.raises(ValueError, match=r"'vit_b'.*neck\.1\.weight"):
        build_sam_from_state_dict(sd)


def test_save_checkpoint_failure_leaves_no_file(tmp_path, monkeypatch):
    from samsparse.checkpoints import save_checkpoint

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ckpt.pth", {"w": torch.zeros(2)})
    assert list(tmp_path.iterdir()) == []
