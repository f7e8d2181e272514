import json
import socket
import threading
import time

import pytest

from comfy_fake_server import FakeComfy, ffmpeg_path
from kohyawan.comfy.client import (ComfyClient, ExecutionFailed, PromptRejected, ServerUnreachable, TimedOut,
                                   node_error_lines, output_files)
from kohyawan.comfy.validate import check_workflow
from kohyawan.comfy.workflow import build_workflow
from kohyawan.errors import Interrupted


@pytest.fixture
def fake(tmp_path):
    with FakeComfy(tmp_path / "comfy", loras=["sarah_v1.safetensors", "sarah_v2.safetensors"], ffmpeg=ffmpeg_path()) as server:
        yield server


def _wf(**kw):
    kw.setdefault("loras_high", [("sarah_v1.safetensors", 1.0)])
    kw.setdefault("loras_low", [("sarah_v1.safetensors", 1.0)])
    return build_workflow(prompt="a fox", frames=17, steps=4, **kw)


def test_run_follows_progress_and_downloads(fake):
    client = ComfyClient(fake.url)
    events = []
    prompt_id, entry = client.run(_wf(), timeout=30, on_event=lambda kind, data: events.append((kind, data)))
    kinds = [k for k, _ in events]
    assert "progress" in kinds and "executed" in kinds and kinds[-1] == "execution_success"
    progress = [d for k, d in events if k == "progress"]
    assert progress[-1]["value"] == progress[-1]["max"] == 2  # the low-noise sampler runs steps 2..4
    assert all(d["prompt_id"] == prompt_id for _, d in events)
    files = output_files(entry)
    assert files == [{"node": "16", "filename": "wan_00001_.mp4", "subfolder": "kohyawan", "type": "output"}]
    data = client.view(files[0]["filename"], files[0]["subfolder"])
    assert data == (fake.output_dir / "kohyawan" / "wan_00001_.mp4").read_bytes() and data[4:8] == b"ftyp"
    assert entry["status"]["status_str"] == "success"


def test_node_errors_are_reported_per_node(fake):
    client = ComfyClient(fake.url)
    wf = _wf(loras_high=[("missing.safetensors", 1.0)], cfg=3.5)
    wf["12"]["inputs"]["cfg"] = 500.0
    with pytest.raises(PromptRejected) as info:
        client.run(wf, timeout=5)
    assert str(info.value) == ("ComfyUI rejected the workflow: node 7 (LoraLoaderModelOnly): Value not in list: "
                               "lora_name: 'missing.safetensors' not in ['sarah_v1.safetensors', 'sarah_v2.safetensors']"
                               " (and 1 more)")
    assert info.value.details[1] == "node 12 (KSamplerAdvanced): Value 500.0 bigger than max of 100.0: cfg"
    assert info.value.exit_code == 1
    assert not fake.history


def test_unknown_node_type_rejected_with_top_level_error(fake):
    wf = _wf()
    wf["16"]["class_type"] = "VHS_VideoCombine"
    with pytest.raises(PromptRejected, match="Cannot execute because node VHS_VideoCombine does not exist"):
        ComfyClient(fake.url).queue_prompt(wf)


def test_execution_error_names_the_node(fake):
    fake.fail_class = "KSamplerAdvanced"
    with pytest.raises(ExecutionFailed) as info:
        ComfyClient(fake.url).run(_wf(), timeout=30)
    assert str(info.value) == ("ComfyUI failed at node 12 (KSamplerAdvanced): torch.OutOfMemoryError: "
                               "Allocation on device")


def test_timeout_interrupts_the_prompt(fake):
    fake.hang = True
    client = ComfyClient(fake.url)
    started = time.monotonic()
    with pytest.raises(TimedOut, match=r"did not finish within 1 s"):
        client.run(_wf(), timeout=1)
    assert time.monotonic() - started < 5
    assert fake.interrupts and fake.interrupts[0]["prompt_id"]
    for _ in range(50):  # the fake stops sampling once interrupted and records an error
        if fake.history:
            break
        time.sleep(0.05)
    (entry,) = fake.history.values()
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"


def test_interrupted_by_the_server_is_interrupted(fake):
    fake.hang = True
    client = ComfyClient(fake.url)
    threading.Timer(0.5, lambda: ComfyClient(fake.url).interrupt()).start()
    with pytest.raises(Interrupted):
        client.run(_wf(), timeout=20)


def test_server_down_is_a_clean_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ComfyClient(f"127.0.0.1:{port}", timeout=2)
    with pytest.raises(ServerUnreachable, match=rf"cannot reach ComfyUI at http://127.0.0.1:{port}: .*refused"):
        client.object_info()
    with pytest.raises(ServerUnreachable, match="WebSocket"):
        client.run(_wf(), timeout=2)


def test_missing_file_view_fails(fake):
    with pytest.raises(Exception, match=r"could not send kohyawan/nope.mp4 \(HTTP 404\)"):
        ComfyClient(fake.url).view("nope.mp4", "kohyawan")


def test_upload_queue_free_interrupt(fake, tmp_path):
    image = tmp_path / "start frame ü.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    client = ComfyClient(fake.url)
    assert client.queue() == {"queue_running": [], "queue_pending": []}
    name = client.upload_image(image)
    assert name == "start frame ü.png"
    assert (fake.input_dir / "start frame ü.png").read_bytes() == image.read_bytes()
    assert name in client.object_info()["LoadImage"]["input"]["required"]["image"][0]
    # a subfolder upload is not listed by LoadImage, yet accepted (LoadImage validates the name itself)
    sub = client.upload_image(image, subfolder="kohyawan")
    assert sub == "kohyawan/start frame ü.png"
    info = client.object_info()
    assert sub not in info["LoadImage"]["input"]["required"]["image"][0]
    i2v = build_workflow("i2v-A14B", image=sub, frames=5, steps=2, unet_high=fake.unets[2], unet_low=fake.unets[3])
    assert check_workflow(i2v, info) == []
    client.queue_prompt(i2v)
    i2v["5"]["inputs"]["image"] = "missing.png"
    with pytest.raises(PromptRejected, match="Invalid image file: missing.png"):
        client.queue_prompt(i2v)
    client.free()
    assert fake.frees == [{"unload_models": True, "free_memory": True}]
    client.interrupt()
    assert fake.interrupts == [{}]


def test_validation_against_object_info_handles_both_input_styles(fake):
    info = ComfyClient(fake.url).object_info()
    assert check_workflow(_wf(), info) == []
    assert check_workflow(_wf(output="webp"), info) == []
    wf = _wf(loras_low=[("nope.safetensors", 0.5)])
    wf["16"]["inputs"]["format"] = "gif"             # a COMBO input of a newer-API node
    wf["5"]["inputs"]["length"] = 0                   # below min
    wf["11"]["inputs"]["model"] = ["2", 0]            # CONDITIONING into MODEL
    del wf["3"]["inputs"]["text"]
    wf["99"] = {"class_type": "NoSuchNode", "inputs": {}}
    problems = [str(p) for p in check_workflow(wf, info)]
    assert problems == [
        "node 3 (CLIPTextEncode): text: required input is missing",
        "node 5 (EmptyHunyuanLatentVideo): length: 0 is below the minimum 1",
        "node 10 (LoraLoaderModelOnly): lora_name: 'nope.safetensors' is not available "
        "(allowed: 'sarah_v1.safetensors', 'sarah_v2.safetensors')",
        "node 11 (ModelSamplingSD3): model: links a CONDITIONING output of node 2 (CLIPTextEncode) to a MODEL input",
        "node 16 (SaveVideo): format: 'gif' is not available (allowed: 'auto', 'mp4')",
        "node 99 (NoSuchNode): node type is not on the server (a missing custom node or an older ComfyUI)",
    ]


def test_node_error_lines_without_node_errors():
    body = {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}},
            "node_errors": {}}
    assert node_error_lines(body) == ["Prompt has no outputs"]


def test_websocket_frames_fragments_ping_binary_close():
    import base64
    import hashlib
    import struct

    from kohyawan.comfy.ws import WebSocket, WebSocketClosed

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    got_pong = []

    def serve():
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(1024)
            key = [l.split(b":", 1)[1].strip() for l in request.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            long_text = json.dumps({"type": "status", "data": "x" * 300}).encode()
            conn.sendall(bytes([0x89, 4]) + b"ping"                       # ping
                         + bytes([0x01, 3]) + b"hel" + bytes([0x80, 2]) + b"lo"  # fragmented text
                         + bytes([0x81, 126]) + struct.pack("!H", len(long_text)) + long_text
                         + bytes([0x82, 3]) + b"\x00\x01\x02"                # binary preview
                         + bytes([0x88, 2]) + struct.pack("!H", 1000))       # close
            head = conn.recv(2)
            mask = conn.recv(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(conn.recv(head[1] & 0x7F)))
            got_pong.append((head[0], bool(head[1] & 0x80), payload))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ws = WebSocket.connect(f"ws://127.0.0.1:{port}/ws?clientId=abc", timeout=5)
    assert ws.recv(timeout=5) == "hello"
    assert json.loads(ws.recv(timeout=5))["data"] == "x" * 300
    assert ws.recv(timeout=5) is None
    with pytest.raises(WebSocketClosed):
        ws.recv(timeout=5)
    ws.close()
    thread.join(5)
    listener.close()
    assert got_pong == [(0x8A, True, b"ping")]
