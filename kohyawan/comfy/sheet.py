"""What a person looks at after a grid: a contact sheet PNG (first frame of every cell, labelled) and an
``index.html`` with the outputs side by side (relative links, so the folder can be moved or shared)."""

from __future__ import annotations

import html
import io
import subprocess
import tempfile
import textwrap
from pathlib import Path
from urllib.parse import quote

from kohyawan.files.atomic import write_bytes, write_text
from kohyawan.errors import BadInput
from kohyawan.files.ffmpeg import ffmpeg_exe

VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v"}
THUMB = 256
LABEL_LINES = 3
LINE_HEIGHT = 14
PAD = 8


def first_frame(media: Path, dest: Path) -> Path:
    """Write the first frame of an image, animated image or video as a PNG at ``dest`` (atomically)."""
    from PIL import Image, UnidentifiedImageError

    if media.suffix.lower() in VIDEO_SUFFIXES:
        with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmp:
            png = Path(tmp) / "frame.png"
            # "--" is not understood by ffmpeg; "file:" keeps a name starting with "-" or holding ":" a path.
            result = subprocess.run([ffmpeg_exe(), "-v", "error", "-nostdin", "-y", "-i", f"file:{media}",
                                     "-frames:v", "1", f"file:{png}"], capture_output=True, text=True)
            if result.returncode != 0 or not png.is_file():
                tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
                raise BadInput(f"ffmpeg could not read a frame from {media.name}: {tail}")
            write_bytes(dest, png.read_bytes())
        return dest
    try:
        with Image.open(media) as image:
            image.seek(0)
            frame = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise BadInput(f"cannot read an image from {media.name}: {exc}") from None
    buffer = io.BytesIO()
    frame.save(buffer, format="PNG")
    write_bytes(dest, buffer.getvalue())
    return dest


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


def _text(draw, xy, text, font, fill):
    try:
        draw.text(xy, text, font=font, fill=fill)
    except UnicodeEncodeError:  # the bitmap fallback font is latin-1 only
        draw.text(xy, text.encode("latin-1", "replace").decode("latin-1"), font=font, fill=fill)


def _grid(manifest: dict) -> tuple[list[dict], list[dict], dict]:
    cols = manifest["columns"]
    rows = manifest["prompts"]
    cells = {(c["prompt_index"], c["column"]): c for c in manifest["cells"]}
    return rows, cols, cells


def contact_sheet(out_dir: Path, manifest: dict, name: str = "contact_sheet.png") -> Path:
    """Rows = prompts, columns = base / strengths / compared version; each tile labelled under it."""
    from PIL import Image, ImageDraw, ImageOps

    rows, cols, cells = _grid(manifest)
    font = _font()
    tile_w, tile_h = THUMB, THUMB + LABEL_LINES * LINE_HEIGHT + PAD
    sheet = Image.new("RGB", (PAD + len(cols) * (tile_w + PAD), PAD + len(rows) * (tile_h + PAD)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, col in enumerate(cols):
            x, y = PAD + c * (tile_w + PAD), PAD + r * (tile_h + PAD)
            cell = cells.get((row["index"], col["key"]))
            frame = cell and cell.get("frame") and out_dir / cell["frame"]
            if frame and frame.is_file():
                with Image.open(frame) as image:
                    thumb = ImageOps.contain(image.convert("RGB"), (THUMB, THUMB))  # small frames scale up too
                sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
            else:
                draw.rectangle([x, y, x + THUMB - 1, y + THUMB - 1], fill=(70, 30, 30))
                status = cell["status"] if cell else "missing"
                _text(draw, (x + 6, y + THUMB // 2 - 6), status, font, (240, 200, 200))
            lines = [col["label"], f"prompt {row['index']}: " + row["text"]]
            wrapped = [lines[0][:40]] + textwrap.wrap(lines[1], 40)[: LABEL_LINES - 1]
            for i, line in enumerate(wrapped):
                _text(draw, (x, y + THUMB + 4 + i * LINE_HEIGHT), line, font, (230, 230, 230))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_bytes(out_dir / name, buffer.getvalue())
    return out_dir / name


def _media_tag(rel: str) -> str:
    src = html.escape(quote(rel), quote=True)
    if Path(rel).suffix.lower() in VIDEO_SUFFIXES:
        return f'<video src="{src}" controls loop muted playsinline preload="metadata"></video>'
    return f'<img src="{src}" alt="">'


def index_html(out_dir: Path, manifest: dict, name: str = "index.html") -> Path:
    rows, cols, cells = _grid(manifest)
    esc = html.escape
    head = "".join(f"<th>{esc(c['label'])}</th>" for c in cols)
    body = []
    for row in rows:
        tds = [f'<th class="prompt">{row["index"]}. {esc(row["text"])}</th>']
        for col in cols:
            cell = cells.get((row["index"], col["key"]))
            if cell and cell.get("outputs"):
                links = " ".join(f'<a href="{esc(quote(o), quote=True)}">{esc(Path(o).name)}</a>' for o in cell["outputs"])
                tds.append(f"<td>{_media_tag(cell['outputs'][0])}<div>{links}</div></td>")
            else:
                why = esc(cell.get("error") or cell.get("status", "")) if cell else "missing"
                tds.append(f'<td class="missing">{why}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    sheet = manifest.get("contact_sheet")
    sheet_link = f'<p><a href="{esc(quote(sheet), quote=True)}">contact sheet</a></p>' if sheet else ""
    title = esc(f"kohyawan grid: {manifest.get('name', '')}")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;background:#181818;color:#ddd}} table{{border-collapse:collapse}}
td,th{{border:1px solid #444;padding:4px;vertical-align:top}} video,img{{max-width:320px;display:block}}
th.prompt{{max-width:240px;text-align:left;font-weight:normal}} td.missing{{color:#e99}} a{{color:#9cf}}</style>
</head><body><h1>{title}</h1>
<p>task {esc(str(manifest.get('task')))}, seed {esc(str(manifest.get('seed')))} (+ prompt number), settings {esc(str(manifest.get('settings')))}</p>
{sheet_link}<table><tr><th>prompt</th>{head}</tr>
{chr(10).join(body)}
</table></body></html>
"""
    write_text(out_dir / name, page)
    return out_dir / name
