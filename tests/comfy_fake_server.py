"""A fake ComfyUI on 127.0.0.1 for tests: real HTTP and a real WebSocket, standard library only.

It copies the behaviour of ComfyUI 0.8 that kohyawan relies on (server.py, execution.py, main.py):
- GET /object_info: classic nodes describe dropdowns as ``[[choices], {}]``; nodes on the newer node API as
  ``["COMBO", {"options": [...]}]``; numbers as ``["INT"|"FLOAT", {"min", "max", ...}]``; links as ``["MODEL"]``.
- POST /prompt: 200 ``{"prompt_id", "number", "node_errors": {}}`` or 400 ``{"error": {...}, "node_errors":
  {id: {"errors": [{"type", "message", "details", "extra_info"}], "dependent_outputs", "class_type"}}}``.
- one worker runs the queue; over ``/ws?clientId=`` it sends ``status`` on connect, then per prompt
  ``execution_start``, ``execution_cached``, ``executing`` per node, ``progress`` while sampling (plus a binary
  preview frame), ``executed`` for save nodes, ``execution_success`` (or ``execution_error`` /
  ``execution_interrupted``), stores the history entry, and only then ``executing`` with ``node: null``.
- GET /history/{id}, GET /view (404 when missing), POST /upload/image, POST /interrupt, GET|POST /queue, POST /free.
Save nodes write a real small file whose colour encodes the LoRA strengths, so downloads can be checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import re
import socket
import struct
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "uni_pc"]
SCHEDULERS = ["simple", "normal", "karras", "beta"]


def object_info(loras, unets, clips, vaes, images):
    num = lambda kind, default, lo, hi, **kw: [kind, {"default": default, "min": lo, "max": hi, **kw}]
    classic = {
        "UNETLoader": ({"unet_name": [unets], "weight_dtype": [["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]]}, {}, ["MODEL"]),
        "LoraLoaderModelOnly": ({"model": ["MODEL"], "lora_name": [loras],
                                 "strength_model": num("FLOAT", 1.0, -100.0, 100.0, step=0.01)}, {}, ["MODEL"]),
        "CLIPLoader": ({"clip_name": [clips], "type": [["stable_diffusion", "sd3", "wan", "hidream"]]},
                       {"device": [["default", "cpu"], {"advanced": True}]}, ["CLIP"]),
        "CLIPTextEncode": ({"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]}, {}, ["CONDITIONING"]),
        "KSamplerAdvanced": ({"model": ["MODEL"], "add_noise": [["enable", "disable"]],
                              "noise_seed": num("INT", 0, 0, 0xFFFFFFFFFFFFFFFF), "steps": num("INT", 20, 1, 10000),
                              "cfg": num("FLOAT", 8.0, 0.0, 100.0), "sampler_name": [SAMPLERS], "scheduler": [SCHEDULERS],
                              "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "latent_image": ["LATENT"],
                              "start_at_step": num("INT", 0, 0, 10000), "end_at_step": num("INT", 10000, 0, 10000),
                              "return_with_leftover_noise": [["disable", "enable"]]}, {}, ["LATENT"]),
        "VAELoader": ({"vae_name": [vaes + ["pixel_space"]]}, {}, ["VAE"]),
        "VAEDecode": ({"samples": ["LATENT"], "vae": ["VAE"]}, {}, ["IMAGE"]),
        "LoadImage": ({"image": [images, {"image_upload": True}]}, {}, ["IMAGE", "MASK"]),
        "ModelSamplingSD3": ({"model": ["MODEL"], "shift": num("FLOAT", 3.0, 0.0, 100.0)}, {}, ["MODEL"]),
    }
    combo = lambda options, default: ["COMBO", {"options": options, "default": default, "multiselect": False}]
    newer = {
        "EmptyHunyuanLatentVideo": ({"width": num("INT", 848, 16, 16384, step=16), "height": num("INT", 480, 16, 16384, step=16),
                                     "length": num("INT", 25, 1, 16384, step=4), "batch_size": num("INT", 1, 1, 4096)}, {}, ["LATENT"]),
        "WanImageToVideo": ({"positive": ["CONDITIONING", {}], "negative": ["CONDITIONING", {}], "vae": ["VAE", {}],
                             "width": num("INT", 832, 16, 16384), "height": num("INT", 480, 16, 16384),
                             "length": num("INT", 81, 1, 16384), "batch_size": num("INT", 1, 1, 4096)},
                            {"clip_vision_output": ["CLIP_VISION_OUTPUT", {}], "start_image": ["IMAGE", {}]},
                            ["CONDITIONING", "CONDITIONING", "LATENT"]),
        "CreateVideo": ({"images": ["IMAGE", {}], "fps": num("FLOAT", 30.0, 1.0, 120.0)}, {"audio": ["AUDIO", {}]}, ["VIDEO"]),
        "SaveVideo": ({"video": ["VIDEO", {}], "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
                       "format": combo(["auto", "mp4"], "auto"), "codec": combo(["auto", "h264"], "auto")}, {}, []),
        "SaveAnimatedWEBP": ({"images": ["IMAGE", {}], "filename_prefix": ["STRING", {"default": "ComfyUI"}],
                              "fps": num("FLOAT", 6.0, 0.01, 1000.0), "lossless": ["BOOLEAN", {"default": True}],
                              "quality": num("INT", 80, 0, 100), "method": combo(["default", "fastest", "slowest"], "default")},
                             {}, []),
    }
    info = {}
    for name, (req, opt, out) in {**classic, **newer}.items():
        entry = {"input": {"required": req}, "input_order": {"required": list(req)}, "output": out,
                 "output_is_list": [False] * len(out), "output_name": out, "name": name, "display_name": name,
                 "description": "", "python_module": "nodes", "category": "test",
                 "output_node": name.startswith("Save")}
        if opt:
            entry["input"]["optional"] = opt
            entry["input_order"]["optional"] = list(opt)
        info[name] = entry
    return info


def _ws_frame(payload: bytes, opcode: int) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | opcode, 127]) + struct.pack("!Q", n)
    return head + payload


class FakeComfy:
    def __init__(self, root: Path, loras=("sarah_v1.safetensors",), ffmpeg: str | None = None):
        self.root = Path(root)
        self.output_dir = self.root / "output"
        self.input_dir = self.root / "input"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.input_dir.mkdir(parents=True, exist_ok=True)
        self.loras = list(loras)
        self.unets = ["wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
                      "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"]
        self.clips = ["umt5_xxl_fp8_e4m3fn_scaled.safetensors"]
        self.vaes = ["wan_2.1_vae.safetensors"]
        self.ffmpeg = ffmpeg
        self.fail_class: str | None = None     # raise an execution error at the first node of this class
        self.hang = False                      # sample forever (until /interrupt)
        self.step_delay = 0.0
        self.history: dict[str, dict] = {}
        self.queue: "queue.Queue" = queue.Queue()
        self.pending: list[tuple] = []
        self.running: list[tuple] = []
        self.sockets: dict[str, socket.socket] = {}
        self.requests: list[tuple[str, str]] = []
        self.interrupts: list[dict] = []
        self.frees: list[dict] = []
        self.deleted: list[str] = []
        self._interrupt = threading.Event()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._counter = 0
        self.number = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._threads = [threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True),
                         threading.Thread(target=self._worker, daemon=True)]

    def images(self):
        # like LoadImage: only the top of the input folder is listed
        return sorted(p.name for p in self.input_dir.iterdir() if p.is_file())

    def object_info(self):
        return object_info(self.loras, self.unets, self.clips, self.vaes, self.images())

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._interrupt.set()
        self.queue.put(None)
        self.httpd.shutdown()
        self.httpd.server_close()
        for sock in list(self.sockets.values()):
            try:
                sock.close()
            except OSError:
                pass

    # -- validation, written from execution.validate_inputs / validate_prompt ---------------------------

    def validate(self, prompt: dict):
        info = self.object_info()
        for node_id, node in prompt.items():
            if "class_type" not in node:
                return {"type": "invalid_prompt", "message": "Cannot execute because a node is missing the class_type property.",
                        "details": f"Node ID '#{node_id}'", "extra_info": {}}, {}
            if node["class_type"] not in info:
                return {"type": "invalid_prompt", "message": f"Cannot execute because node {node['class_type']} does not exist.",
                        "details": f"Node ID '#{node_id}'", "extra_info": {}}, {}
        outputs = [i for i, n in prompt.items() if info[n["class_type"]]["output_node"]]
        if not outputs:
            return {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}, {}
        node_errors = {}
        for node_id, node in prompt.items():
            errors = []
            spec = info[node["class_type"]]["input"]
            for name, sp in {**spec.get("required", {}), **spec.get("optional", {})}.items():
                if name not in node["inputs"]:
                    if name in spec.get("required", {}):
                        errors.append({"type": "required_input_missing", "message": "Required input is missing",
                                       "details": name, "extra_info": {"input_name": name}})
                    continue
                val = node["inputs"][name]
                kind = sp[0]
                extra = sp[1] if len(sp) > 1 else {}
                if isinstance(val, list):
                    continue
                if (node["class_type"], name) == ("LoadImage", "image"):  # LoadImage.VALIDATE_INPUTS
                    if not (self.input_dir / val).is_file():
                        errors.append({"type": "custom_validation_failed", "message": "Custom validation failed for node",
                                       "details": f"image - Invalid image file: {val}", "extra_info": {}})
                    continue
                choices = kind if isinstance(kind, list) else extra.get("options") if kind == "COMBO" else None
                if choices is not None and val not in choices:
                    shown = f"(list of length {len(choices)})" if len(choices) > 20 else str(choices)
                    errors.append({"type": "value_not_in_list", "message": "Value not in list",
                                   "details": f"{name}: '{val}' not in {shown}",
                                   "extra_info": {"input_name": name, "received_value": val}})
                elif kind in ("INT", "FLOAT") and "max" in extra and val > extra["max"]:
                    errors.append({"type": "value_bigger_than_max", "message": f"Value {val} bigger than max of {extra['max']}",
                                   "details": name, "extra_info": {"input_name": name, "received_value": val}})
                elif kind in ("INT", "FLOAT") and "min" in extra and val < extra["min"]:
                    errors.append({"type": "value_smaller_than_min", "message": f"Value {val} smaller than min of {extra['min']}",
                                   "details": name, "extra_info": {"input_name": name, "received_value": val}})
            if errors:
                node_errors[node_id] = {"errors": errors, "dependent_outputs": outputs, "class_type": node["class_type"]}
        if node_errors:
            details = "\n".join(f"{e['message']}: {e['details']}" for n in node_errors.values() for e in n["errors"])
            return {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                    "details": details, "extra_info": {}}, node_errors
        return None, {}

    # -- execution ------------------------------------------------------------------------------------

    def send(self, client_id, kind, data):
        sock = self.sockets.get(client_id)
        if sock is None:
            return
        payload = json.dumps({"type": kind, "data": data}).encode() if kind != "binary" else data
        try:
            with self._send_lock:
                sock.sendall(_ws_frame(payload, 0x1 if kind != "binary" else 0x2))
        except OSError:
            self.sockets.pop(client_id, None)

    def _order(self, prompt):
        done, order = set(), []

        def visit(i):
            if i in done:
                return
            done.add(i)
            for v in prompt[i]["inputs"].values():
                if isinstance(v, list) and len(v) == 2 and v[0] in prompt:
                    visit(v[0])
            order.append(i)
        for i in prompt:
            visit(i)
        return order

    def _colour(self, prompt):
        total = sum(n["inputs"]["strength_model"] for n in prompt.values() if n["class_type"] == "LoraLoaderModelOnly")
        loras = {n["inputs"]["lora_name"] for n in prompt.values() if n["class_type"] == "LoraLoaderModelOnly"}
        red = min(255, int(round(total / 2 * 255)))  # a LoRA on both experts at 1.0 sums to 2.0
        blue = 200 if any("v2" in name for name in loras) else 40
        return (red, 120 if loras else 230, blue)

    def _save(self, prompt, node):
        with self._lock:
            self._counter += 1
            counter = self._counter
        prefix = node["inputs"]["filename_prefix"]
        subfolder, _, base = prefix.rpartition("/")
        folder = self.output_dir / subfolder
        folder.mkdir(parents=True, exist_ok=True)
        r, g, b = self._colour(prompt)
        if node["class_type"] == "SaveVideo":
            name = f"{base}_{counter:05}_.mp4"
            subprocess.run([self.ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", f"color=c=0x{r:02x}{g:02x}{b:02x}:s=64x48:d=0.25",
                            "-r", "16", "-pix_fmt", "yuv420p", str(folder / name)], check=True)
            return {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": [True]}
        from PIL import Image
        name = f"{base}_{counter:05}_.webp"
        frames = [Image.new("RGB", (64, 48), (r, g, b)) for _ in range(3)]
        frames[0].save(folder / name, save_all=True, append_images=frames[1:], duration=62)
        return {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": [True]}

    def _worker(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            number, prompt_id, prompt, client_id = item
            with self._lock:
                if prompt_id in self.deleted:
                    self.pending = [p for p in self.pending if p[1] != prompt_id]
                    continue
                self.pending = [p for p in self.pending if p[1] != prompt_id]
                self.running = [item]
            self._interrupt.clear()
            messages, outputs, status = [], {}, "success"

            def add(kind, data):
                messages.append([kind, data])
                self.send(client_id, kind, data)
            add("execution_start", {"prompt_id": prompt_id})
            add("execution_cached", {"nodes": [], "prompt_id": prompt_id})
            executed = []
            for node_id in self._order(prompt):
                node = prompt[node_id]
                self.send(client_id, "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})
                if self.fail_class == node["class_type"]:
                    add("execution_error", {"prompt_id": prompt_id, "node_id": node_id, "node_type": node["class_type"],
                                            "executed": executed, "exception_message": "Allocation on device \n",
                                            "exception_type": "torch.OutOfMemoryError", "traceback": ["..."],
                                            "current_inputs": {}, "current_outputs": []})
                    status = "error"
                    break
                if node["class_type"] == "KSamplerAdvanced":
                    start, end = node["inputs"]["start_at_step"], min(node["inputs"]["end_at_step"], node["inputs"]["steps"])
                    total, step = end - start, 0
                    while step < total or self.hang:
                        if self._interrupt.wait(self.step_delay if not self.hang else 0.05):
                            add("execution_interrupted", {"prompt_id": prompt_id, "node_id": node_id,
                                                          "node_type": node["class_type"], "executed": executed})
                            status = "error"
                            break
                        step = min(step + 1, total)
                        self.send(client_id, "progress", {"value": step, "max": total, "prompt_id": prompt_id, "node": node_id})
                        self.send(client_id, "binary", struct.pack(">II", 1, 2) + b"\xff\xd8preview")
                    if status == "error":
                        break
                if node["class_type"] in ("SaveVideo", "SaveAnimatedWEBP"):
                    out = self._save(prompt, node)
                    outputs[node_id] = out
                    self.send(client_id, "executed", {"node": node_id, "display_node": node_id, "output": out, "prompt_id": prompt_id})
                executed.append(node_id)
            if status == "success":
                add("execution_success", {"prompt_id": prompt_id})
            with self._lock:
                self.history[prompt_id] = {
                    "prompt": [number, prompt_id, prompt, {"client_id": client_id}, [i for i in outputs]],
                    "outputs": outputs,
                    "status": {"status_str": status, "completed": status == "success", "messages": messages},
                    "meta": {i: {"node_id": i, "display_node": i} for i in outputs},
                }
                self.running = []
            self.send(client_id, "executing", {"node": None, "prompt_id": prompt_id})

    # -- HTTP -----------------------------------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", ctype="application/json"):
                if not isinstance(body, bytes):
                    body = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self):
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                url = urlsplit(self.path)
                fake.requests.append(("GET", url.path))
                query = parse_qs(url.query)
                if url.path == "/ws":
                    return self._websocket(query.get("clientId", [""])[0] or uuid.uuid4().hex)
                if url.path == "/object_info":
                    return self._send(200, fake.object_info())
                if url.path.startswith("/history/"):
                    pid = url.path[len("/history/"):]
                    with fake._lock:
                        entry = fake.history.get(pid)
                    return self._send(200, {pid: entry} if entry else {})
                if url.path == "/queue":
                    with fake._lock:
                        return self._send(200, {"queue_running": [list(i) for i in fake.running],
                                                "queue_pending": [list(i) for i in fake.pending]})
                if url.path == "/view":
                    name = query.get("filename", [""])[0]
                    if not name or name[0] == "/" or ".." in name:
                        return self._send(400)
                    base = fake.output_dir if query.get("type", ["output"])[0] == "output" else fake.input_dir
                    path = base / query.get("subfolder", [""])[0] / name
                    if not path.is_file():
                        return self._send(404)
                    return self._send(200, path.read_bytes(), "application/octet-stream")
                return self._send(404)

            def do_POST(self):
                url = urlsplit(self.path)
                fake.requests.append(("POST", url.path))
                body = self._body()
                if url.path == "/upload/image":
                    # Like aiohttp's multipart reader: part headers are UTF-8 (browsers send raw UTF-8 names).
                    boundary = self.headers["Content-Type"].split("boundary=", 1)[1].encode()
                    fields = {}
                    for part in body.split(b"--" + boundary)[1:-1]:
                        head, _, content = part.strip(b"\r\n").partition(b"\r\n\r\n")
                        disposition = head.decode("utf-8").split("\r\n")[0]
                        params = dict(re.findall(r'(\w+)="([^"]*)"', disposition))
                        fields[params["name"]] = (params.get("filename"), content)
                    filename, data = fields["image"]
                    subfolder = fields.get("subfolder", (None, b""))[1].decode()
                    (fake.input_dir / subfolder).mkdir(parents=True, exist_ok=True)
                    (fake.input_dir / subfolder / filename).write_bytes(data)
                    return self._send(200, {"name": filename, "subfolder": subfolder, "type": "input"})
                data = json.loads(body) if body else {}
                if url.path == "/prompt":
                    if "prompt" not in data:
                        return self._send(400, {"error": {"type": "no_prompt", "message": "No prompt provided",
                                                          "details": "No prompt provided", "extra_info": {}}, "node_errors": {}})
                    error, node_errors = fake.validate(data["prompt"])
                    if error:
                        return self._send(400, {"error": error, "node_errors": node_errors})
                    prompt_id = str(data.get("prompt_id", uuid.uuid4()))
                    with fake._lock:
                        number = fake.number
                        fake.number += 1
                        item = (number, prompt_id, data["prompt"], data.get("client_id"))
                        fake.pending.append(item)
                    fake.queue.put(item)
                    return self._send(200, {"prompt_id": prompt_id, "number": number, "node_errors": {}})
                if url.path == "/interrupt":
                    fake.interrupts.append(data)
                    with fake._lock:
                        running = [i[1] for i in fake.running]
                    if not data.get("prompt_id") or data["prompt_id"] in running:
                        fake._interrupt.set()
                    return self._send(200, b"", "text/plain")
                if url.path == "/queue":
                    with fake._lock:
                        fake.deleted.extend(data.get("delete", []))
                        fake.pending = [p for p in fake.pending if p[1] not in fake.deleted]
                    return self._send(200, b"", "text/plain")
                if url.path == "/free":
                    fake.frees.append(data)
                    return self._send(200, b"", "text/plain")
                return self._send(404)

            def _websocket(self, client_id):
                key = self.headers.get("Sec-WebSocket-Key", "")
                accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept.decode())
                self.end_headers()
                self.wfile.flush()
                fake.sockets[client_id] = self.connection
                fake.send(client_id, "status", {"status": {"exec_info": {"queue_remaining": len(fake.pending)}}, "sid": client_id})
                try:
                    while True:  # read client frames until it closes
                        head = self.rfile.read(2)
                        if len(head) < 2:
                            break
                        n = head[1] & 0x7F
                        if n == 126:
                            n = struct.unpack("!H", self.rfile.read(2))[0]
                        elif n == 127:
                            n = struct.unpack("!Q", self.rfile.read(8))[0]
                        self.rfile.read(4 + n)
                        if head[0] & 0x0F == 0x8:
                            break
                except OSError:
                    pass
                fake.sockets.pop(client_id, None)
                self.close_connection = True

        return Handler


def ffmpeg_path() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()
