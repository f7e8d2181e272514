"""HTTP + WebSocket client for a running ComfyUI (standard library only).

Endpoints as served by ComfyUI 0.8 (server.py): ``GET /object_info``, ``POST /prompt`` (200 with
``prompt_id``, or 400 with ``error`` and ``node_errors``), ``GET /history/{id}``, ``GET /view``,
``POST /upload/image``, ``POST /interrupt``, ``GET|POST /queue``, ``POST /free``, and ``/ws?clientId=``.

ComfyUI sends ``execution_success`` *before* it stores the history entry; the entry exists once the final
``executing`` message with ``node: null`` for our prompt arrives, so that message is what ends a wait.
"""

from __future__ import annotations

import json
import mimetypes
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

from kohyawan.comfy.ws import WebSocket, WebSocketClosed
from kohyawan.errors import BadInput, Interrupted, WorkFailed


class ServerUnreachable(BadInput):
    """Nothing answered at the configured URL: nothing was done."""


class PromptRejected(WorkFailed):
    """POST /prompt answered 400: the server's validation refused the workflow."""

    def __init__(self, message: str, details: list[str]):
        super().__init__(message)
        self.details = details


class ExecutionFailed(WorkFailed):
    pass


class TimedOut(WorkFailed):
    pass


def node_error_lines(body: dict) -> list[str]:
    """One line per problem in a 400 answer from POST /prompt."""
    lines = []
    for node_id, entry in (body.get("node_errors") or {}).items():
        for error in entry.get("errors", []):
            detail = error.get("details") or ""
            lines.append(f"node {node_id} ({entry.get('class_type', '?')}): {error.get('message', '')}"
                         + (f": {detail}" if detail else ""))
    error = body.get("error")
    if not lines and isinstance(error, dict):
        lines.append(f"{error.get('message', '')}" + (f": {error['details']}" if error.get("details") else ""))
    elif not lines and error:
        lines.append(str(error))
    return lines


def output_files(history_entry: dict) -> list[dict]:
    """Files a finished prompt produced: SaveVideo/SaveImage/SaveAnimatedWEBP all report them as lists of
    ``{filename, subfolder, type}`` under ``images`` (videos carry ``animated: [true]`` beside)."""
    files = []
    for node_id, output in sorted((history_entry.get("outputs") or {}).items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
        for key in ("images", "gifs", "videos"):
            for item in output.get(key, []) or []:
                if isinstance(item, dict) and "filename" in item:
                    files.append({"node": node_id, "filename": item["filename"],
                                  "subfolder": item.get("subfolder", ""), "type": item.get("type", "output")})
    return files


class ComfyClient:
    def __init__(self, url: str, timeout: float = 30.0):
        url = url.rstrip("/")
        if "://" not in url:
            url = "http://" + url
        self.url = url
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    # -- HTTP -----------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnreachable(f"cannot reach ComfyUI at {self.url}: {reason}") from None

    def _json(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, data = self._request(method, path, body, headers)
        if status != 200:
            raise WorkFailed(f"ComfyUI answered {method} {path} with HTTP {status}")
        try:
            return json.loads(data) if data else None
        except ValueError:
            raise WorkFailed(f"ComfyUI answered {method} {path} with something that is not JSON") from None

    def object_info(self) -> dict:
        return self._json("GET", "/object_info")

    def history(self, prompt_id: str) -> dict:
        return self._json("GET", f"/history/{urllib.parse.quote(prompt_id)}") or {}

    def queue(self) -> dict:
        return self._json("GET", "/queue")

    def interrupt(self, prompt_id: str | None = None) -> None:
        self._request("POST", "/interrupt", json.dumps({"prompt_id": prompt_id} if prompt_id else {}).encode(),
                      {"Content-Type": "application/json"})

    def delete_queued(self, prompt_ids: list[str]) -> None:
        self._request("POST", "/queue", json.dumps({"delete": prompt_ids}).encode(), {"Content-Type": "application/json"})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self._request("POST", "/free", json.dumps({"unload_models": unload_models, "free_memory": free_memory}).encode(),
                      {"Content-Type": "application/json"})

    def queue_prompt(self, workflow: dict, prompt_id: str | None = None) -> str:
        # ComfyUI takes the prompt id from the request when given one: choosing it here means a Ctrl-C that
        # lands while POST /prompt is in flight still knows which prompt to stop.
        body_out = {"prompt": workflow, "client_id": self.client_id}
        if prompt_id:
            body_out["prompt_id"] = prompt_id
        payload = json.dumps(body_out).encode()
        status, data = self._request("POST", "/prompt", payload, {"Content-Type": "application/json"})
        try:
            body = json.loads(data) if data else {}
        except ValueError:
            body = {}
        if status == 400:
            lines = node_error_lines(body) or ["(no details given)"]
            raise PromptRejected(f"ComfyUI rejected the workflow: {lines[0]}"
                                 + (f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""), lines)
        if status != 200 or "prompt_id" not in body:
            raise WorkFailed(f"ComfyUI answered POST /prompt with HTTP {status}")
        return body["prompt_id"]

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        status, data = self._request("GET", f"/view?{query}")
        if status != 200:
            raise WorkFailed(f"ComfyUI could not send {subfolder + '/' if subfolder else ''}{filename} (HTTP {status})")
        return data

    def upload_image(self, path: Path, subfolder: str = "") -> str:
        """Put a start image into ComfyUI's input folder; returns the name LoadImage takes (ComfyUI renames
        it "name (1).png" when a different file of that name is already there)."""
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        quoted = path.name.replace('"', "%22").replace("\r", " ").replace("\n", " ")
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{quoted}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode() + path.read_bytes() + b"\r\n",
            f'--{boundary}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n{subfolder}\r\n'.encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="type"\r\n\r\ninput\r\n'.encode(),
        ]
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, data = self._request("POST", "/upload/image", body,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise WorkFailed(f"ComfyUI refused the upload of {path.name} (HTTP {status})")
        answer = json.loads(data)
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    # -- running a prompt -----------------------------------------------------------------------------

    def ws_url(self) -> str:
        base = self.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return f"{base}/ws?clientId={self.client_id}"

    def run(self, workflow: dict, *, timeout: float = 3600.0,
            on_event: Callable[[str, dict], None] | None = None) -> tuple[str, dict]:
        """Queue ``workflow``, follow it to the end, return (prompt_id, history entry).

        ``on_event(type, data)`` sees ``executing`` / ``progress`` / ``executed`` messages for this prompt.
        Ctrl-C interrupts the prompt on the server (and drops it from the queue) before raising Interrupted.
        """
        try:
            ws = WebSocket.connect(self.ws_url(), timeout=self.timeout)
        except (OSError, WebSocketClosed) as exc:
            raise ServerUnreachable(f"cannot open ComfyUI's WebSocket at {self.url}: {exc}") from None
        prompt_id = str(uuid.uuid4())
        try:
            self.queue_prompt(workflow, prompt_id)
            self._follow(ws, prompt_id, timeout, on_event)
        except KeyboardInterrupt:
            self.interrupt(prompt_id)
            self.delete_queued([prompt_id])
            raise Interrupted(f"interrupted; asked ComfyUI to stop prompt {prompt_id}") from None
        finally:
            ws.close()
        entry = self._history_entry(prompt_id)
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            raise ExecutionFailed(f"ComfyUI reports prompt {prompt_id} failed")
        return prompt_id, entry

    def _history_entry(self, prompt_id: str) -> dict:
        for _ in range(50):  # the entry is written right after the last message; allow a moment
            entry = self.history(prompt_id).get(prompt_id)
            if entry:
                return entry
            time.sleep(0.1)
        raise WorkFailed(f"ComfyUI has no history for prompt {prompt_id}")

    def _follow(self, ws: WebSocket, prompt_id: str, timeout: float, on_event) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.interrupt(prompt_id)
                self.delete_queued([prompt_id])
                raise TimedOut(f"prompt {prompt_id} did not finish within {timeout:g} s; asked ComfyUI to stop it")
            try:
                text = ws.recv(timeout=min(left, 5.0))
            except (socket.timeout, TimeoutError):
                # Quiet socket: the prompt may have ended while we were not listening (e.g. a reconnect).
                if self.history(prompt_id).get(prompt_id):
                    return
                continue
            except (WebSocketClosed, OSError) as exc:
                raise WorkFailed(f"lost the connection to ComfyUI while prompt {prompt_id} ran: {exc}") from None
            if text is None:
                continue  # binary preview frame
            try:
                message = json.loads(text)
            except ValueError:
                continue
            kind, data = message.get("type"), message.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            if kind == "execution_error":
                raise ExecutionFailed(
                    f"ComfyUI failed at node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type', 'error')}: {data.get('exception_message', '').strip()}")
            if kind == "execution_interrupted":
                raise Interrupted(f"ComfyUI interrupted prompt {prompt_id} at node {data.get('node_id')}")
            if kind == "executing" and data.get("node") is None:
                return
            if on_event and kind in ("executing", "progress", "executed", "execution_success"):
                on_event(kind, data)
