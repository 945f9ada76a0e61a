"""Label the QC classifiers in a browser: one look at an image answers its QC questions.

    python -m hbr.labelling.page --workdir WORK [--stage all|2|3|5|6] [--pick PICK.tsv]

starts a small web server on 127.0.0.1 (from a cluster: `ssh -L 8765:127.0.0.1:8765 HOST`,
then open the printed URL on your own machine). The page shows each image large, with a
zoom of the head, and asks the stage's question in words; keys: 1 = yes (label 1),
0 = no (label 0), Enter = accept the suggested answer, Right/j = next image, Left/k =
previous, Up/Down = another question of the image, u or Backspace = undo the last answer.

Every answer is written at once into the stage's label TSV in --labels (labels/README.md
format), merged with the rows there: other images' rows stay as they are, a label changes
only when you change it, and the file as it was is kept as a dated backup before the
session's first change. In "all" mode (the default) one look answers every QC question
that applies, in the order of the chain: stage 2 (bone image?), 3 (cut off?), 5 (abnormal
contrast?) and 6 (non-standard head pose?); an answer that removes the image skips the
later questions. Stages 5 and 6 are written per background, decided as stage 4 does.
On UK Biobank scans the bone question is suggested by InstanceNumber (12 bone, 11 tissue).

Without --pick the images are stage 1's images not yet labelled for the question(s);
a pick list is a TSV with columns Image and reason, optionally stage and prob (the current
model's probability of label 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence
from urllib.parse import parse_qs, unquote, urlparse

from hbr import pipeline
from hbr.errors import HbrError
from hbr.pipeline import Stage

PROG = "python -m hbr.labelling.page"
# UK Biobank's whole-body DXA: InstanceNumber 12 is the bone image, 11 the tissue image;
# they suggest the answer of the bone-image question (the "body" classifier)
BONE_TASK = "body"
INSTANCE_LABELS = {12: 1, 11: 0}
STATIC_FILES = {"label.html": "text/html", "label.js": "text/javascript", "label.css": "text/css"}
MAX_LISTED = 10  # image names listed in one report line
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def qc_stages() -> list[Stage]:
    """The classifier (QC) stages in chain order: 2, 3, 5, 6."""
    return list(pipeline.CLASSIFIERS.values())  # the registry lists stages in order


def kind_stage(kind: str) -> Stage:
    """The one stage of a kind: stage 1 (DICOM), stage 4 (BACKGROUND)."""
    return next(s for s in pipeline.STAGES if s.kind == kind)


def label_backgrounds(stage: Stage) -> tuple[Optional[str], ...]:
    """The backgrounds a stage has a label file for: black and white, or None for a shared stage."""
    return pipeline.BACKGROUNDS if stage.per_background else (None,)


def removes(stage: Stage, label: int) -> bool:
    """Whether answering `label` removes the image at `stage` (later stages never see it)."""
    return label != stage.keep_label


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


@dataclass
class Item:
    """One image of the session and what is known about it."""

    image: str
    background: Optional[str]  # black or white; None when stage 4 would remove the image
    background_note: str = ""  # why stages 5 and 6 do not apply, when they do not
    reason: str = ""  # why the pick list picked it
    pick_stage: Optional[int] = None  # the stage the pick list picked it for
    prob: Optional[float] = None  # that stage's model's probability of label 1
    prefill: dict[int, int] = field(default_factory=dict)  # stage -> suggested label
    answers: dict[int, int] = field(default_factory=dict)  # stage -> label (label files + this session)


def question_states(item: Item, asked: Sequence[Stage]) -> list[dict]:
    """The asked questions of an image in chain order, each open, answered or skipped.

    A question is skipped when an earlier answer removes the image (bone image = no, cut off
    = yes, abnormal contrast = yes) or, for stages 5 and 6, when the image has neither
    background. A suggested answer of a stage that is not asked counts as its answer.
    """
    asked_numbers = {s.number for s in asked}
    removed_by: Optional[str] = None
    states = []
    for stage in qc_stages():
        label = item.answers.get(stage.number)
        if label is None and stage.number not in asked_numbers:
            label = item.prefill.get(stage.number)
        if stage.per_background and item.background is None:
            state, why = "skipped", item.background_note
        elif removed_by is not None:
            state, why = "skipped", removed_by
        else:
            state, why = ("open", "") if label is None else ("answered", "")
            if label is not None and removes(stage, label):
                removed_by = f"removed at stage {stage.number}: {stage.meaning[label]}"
        if stage.number in asked_numbers:
            states.append({
                "stage": stage.number,
                "state": state,
                "label": item.answers.get(stage.number),
                "prefill": item.prefill.get(stage.number),
                "why": why,
            })
    return states


def has_open_question(item: Item, asked: Sequence[Stage]) -> bool:
    """Whether a question that applies to the image is still unanswered."""
    return any(q["state"] == "open" for q in question_states(item, asked))


class Session:
    """The images of one labelling session, their answers and the label files they go to."""

    def __init__(self, workdir: Path, labels_dir: Path, asked: Sequence[Stage], items: Sequence[Item],
                 notes: Sequence[str] = (), log: Callable[[str], None] = print):
        from hbr.labelling.labelfile import LabelWriter

        self.workdir = Path(workdir)
        self.labels_dir = Path(labels_dir)
        self.asked = list(asked)
        self.items = list(items)
        self.by_image = {item.image: item for item in self.items}
        self.log = log
        self.notes: list[str] = []
        for text in notes:
            self.note(text)
        self.history: list[tuple[str, int, Optional[int]]] = []  # (image, stage, label before)
        # a problem in a label file (a row skipped, a duplicate) goes to the terminal and the page
        self.writers = {path: LabelWriter(path, self.note) for path in self._all_label_paths()}
        self.lock = threading.Lock()  # one answer at a time: the history stays in order

    def note(self, text: str) -> None:
        """Report something the user should know, in the terminal and on the page."""
        self.notes.append(text)
        self.log(text)

    def _all_label_paths(self) -> list[Path]:
        return [self.label_path(s, bak) for s in qc_stages() for bak in label_backgrounds(s)]

    def label_path(self, stage: Stage, bak: Optional[str]) -> Path:
        """The label file of a stage (and background) in the label folder."""
        return self.labels_dir / stage.label_names(bak)[0]

    def item_view(self, item: Item) -> dict:
        """What the page needs of one image."""
        questions = question_states(item, self.asked)
        for q in questions:  # the label file each answer goes to ("" when there is none)
            stage = pipeline.stage(q["stage"])
            usable = not stage.per_background or item.background is not None
            q["file"] = stage.label_names(item.background)[0] if usable else ""
        return {
            "image": item.image,
            "background": item.background,
            "background_note": item.background_note,
            "reason": item.reason,
            "pick_stage": item.pick_stage,
            "prob": item.prob,
            "questions": questions,
        }

    def view(self) -> dict:
        """The whole session for the page: the questions, the images and the notes."""
        files = []
        for s in self.asked:
            for bak in label_backgrounds(s):
                query = f"stage={s.number}" + (f"&bak={bak}" if bak else "")
                files.append({"name": s.label_names(bak)[0], "url": f"/labels.tsv?{query}"})
        return {
            "mode": "all" if len(self.asked) > 1 else str(self.asked[0].number),
            "stages": [
                {"number": s.number, "name": s.name, "question": s.question, "meaning": list(s.meaning),
                 "keep_label": s.keep_label, "per_background": s.per_background}
                for s in self.asked
            ],
            "items": [self.item_view(item) for item in self.items],
            "notes": self.notes,
            "labels_dir": str(self.labels_dir),
            "files": files,
        }

    def _question(self, image: str, stage_number: int) -> tuple[Item, Stage, dict]:
        item = self.by_image.get(image)
        if item is None:
            raise KeyError(f"{image!r} is not an image of this session")
        stage = next((s for s in self.asked if s.number == stage_number), None)
        if stage is None:
            raise KeyError(f"stage {stage_number!r} is not asked in this session")
        state = next(q for q in question_states(item, self.asked) if q["stage"] == stage_number)
        return item, stage, state

    def answer(self, image: str, stage_number: int, label: int) -> dict:
        """Write one answer into its label file now; the image's new view.

        KeyError: not an image or stage of the session; ValueError: a label other than
        0/1 or a question that does not apply to the image.
        """
        if type(label) is not int or label not in (0, 1):  # not True, not 1.0: the file must say 0 or 1
            raise ValueError(f"label {label!r} is not 0 or 1")
        with self.lock:
            item, stage, state = self._question(image, stage_number)
            if state["state"] == "skipped":
                raise ValueError(f"stage {stage_number} does not apply to {image}: {state['why']}")
            path = self.label_path(stage, item.background)
            previous = self.writers[path].set(image, label)
            item.answers[stage.number] = label
            self.history.append((image, stage.number, previous))
            self.log(f"{path.name}: {image} = {label} ({stage.meaning[label]})")
            return self.item_view(item)

    def undo(self) -> dict:
        """Take back the session's last answer: the label file holds what it held before."""
        with self.lock:
            if not self.history:
                return {"image": None, "stage": None, "item": None}
            image, number, previous = self.history[-1]
            item, stage = self.by_image[image], pipeline.stage(number)
            path = self.label_path(stage, item.background)
            self.writers[path].set(image, previous)
            self.history.pop()  # only once the file holds it again
            if previous is None:
                item.answers.pop(number, None)
            else:
                item.answers[number] = previous
            self.log(f"{path.name}: {image} undone ({'no label' if previous is None else previous})")
            return {"image": image, "stage": number, "item": self.item_view(item)}

    def label_text(self, stage_number: int, bak: Optional[str]) -> tuple[str, str]:
        """(file name, text) of a label file as it is now; the standard header when there is none yet.

        KeyError: not a QC stage; ValueError: no background for a per-background stage (a
        background given for a shared stage is ignored).
        """
        stage = next((s for s in qc_stages() if s.number == stage_number), None)
        if stage is None:
            raise KeyError(f"stage {stage_number!r} has no label file; QC stages: "
                           f"{', '.join(str(s.number) for s in qc_stages())}")
        if stage.per_background and bak not in pipeline.BACKGROUNDS:
            raise ValueError(f"stage {stage.number} has a label file per background: add &bak=black or &bak=white")
        bak = bak if stage.per_background else None
        path = self.label_path(stage, bak)
        return path.name, self.writers[path].read().text()

    def png(self, image: str) -> Optional[bytes]:
        """The PNG of a session image (made from its .npy when stage 1 wrote no PNG); None if neither."""
        if image not in self.by_image:
            return None
        npy_dir, png_dir = pipeline.image_folders(self.workdir, pipeline.TOTAL_BODY)
        png = png_dir / f"{image}.png"
        if png.is_file():
            return png.read_bytes()
        from hbr.files import encode_png, read_npy

        try:
            return encode_png(read_npy(npy_dir / f"{image}.npy"))
        except (OSError, ValueError):
            return None


# --- building a session from the work directory ------------------------------------------


def _read_table(path: Path, required: Sequence[str]):
    """A TSV of the work directory as text columns (hbr.ledger's reader: HbrError naming the file)."""
    from hbr.ledger import read_table

    return read_table(path, required)


def read_pick(path: Path) -> list[dict]:
    """The rows of a pick list for the QC questions (see hbr.labelling.pick.read_pick)."""
    from hbr.labelling.pick import read_pick as read_rows

    return read_rows(path, [s.number for s in qc_stages()])


def stage1_images(workdir: Path) -> list[str]:
    """Stage 1's images: the Image column of dcm_table.tsv, else the names of 1_Total_Body_png/*.png; sorted."""
    table_path = workdir / pipeline.DCM_TABLE
    if table_path.is_file():
        images = _read_table(table_path, ("Image",))["Image"].str.strip()
        return sorted(set(images[images != ""]))
    png_dir = pipeline.image_folders(workdir, pipeline.TOTAL_BODY)[1]
    return sorted(p.stem for p in png_dir.glob("*.png") if not p.name.startswith("."))


def instance_prefill(workdir: Path) -> dict[str, int]:
    """Image -> suggested stage-2 label from dcm_table.tsv's InstanceNumber (12 bone, 11 tissue)."""
    table_path = workdir / pipeline.DCM_TABLE
    if not table_path.is_file():
        return {}
    table = _read_table(table_path, ("Image",))
    if "InstanceNumber" not in table.columns:
        return {}
    prefill = {}
    for image, number in zip(table["Image"].str.strip(), table["InstanceNumber"].str.strip()):
        try:
            label = INSTANCE_LABELS.get(int(float(number)))
        except ValueError:  # empty or not a number: no suggestion
            continue
        if label is not None:
            prefill[image] = label
    return prefill


def image_background(npy: Path, cfg) -> tuple[Optional[str], str]:
    """(black/white, "") as stage 4 decides it, or (None, why stage 4 would remove the image)."""
    import numpy as np

    from hbr.stages.background import classify_background

    try:
        # memory-mapped: only the header and the corner block are read
        image = np.load(npy, mmap_mode="r", allow_pickle=False)
        decision = classify_background(image, cfg.background, cfg.canvas)
    except (OSError, ValueError) as exc:
        return None, f"unreadable image ({exc})"
    if decision["decision"] in pipeline.BACKGROUNDS:
        return decision["decision"], ""
    return None, f"stage {kind_stage(pipeline.BACKGROUND).number} removes it: {decision['reason']}"


def check_workdir(workdir: Path) -> None:
    """Refuse a work directory where stage 1 has not run, naming the command to run first."""
    stage1 = kind_stage(pipeline.DICOM)
    first = f"python {stage1.script} --input ZIPS --workdir {workdir}"
    if not workdir.is_dir():
        raise HbrError(f"work directory {workdir} not found: run stage {stage1.number} first ({first})")
    png_dir = pipeline.image_folders(workdir, stage1.output())[1]
    if not png_dir.is_dir():
        raise HbrError(f"{png_dir} not found: stage {stage1.number} has not run in {workdir}; run it first ({first})")


def build_session(workdir: Path, labels_dir: Path, stage: Optional[str] = None, pick: Optional[Path] = None,
                  cfg=None, log: Callable[[str], None] = print) -> Session:
    """The session of a command line: the images to show, their backgrounds, suggested and
    existing answers. `stage` is "all", a QC stage number, or None (the pick list's one stage,
    else all). Problems the user can fix raise an HbrError; others are reported through `log`."""
    from hbr.config import load_config

    cfg = cfg or load_config(None)
    workdir, labels_dir = Path(workdir), Path(labels_dir)
    check_workdir(workdir)
    picked = read_pick(pick) if pick is not None else None
    if stage is None:
        pick_stages = {row["stage"] for row in picked or []} - {None}
        stage = str(pick_stages.pop()) if len(pick_stages) == 1 else "all"
    asked = qc_stages() if stage == "all" else [s for s in qc_stages() if str(s.number) == str(stage)]
    if not asked:
        valid = ", ".join(str(s.number) for s in qc_stages())
        raise HbrError(f"stage {stage!r} is not a QC stage; give one of {valid} or all")

    notes: list[str] = []
    npy_dir = pipeline.total_body_npy(workdir)
    rows = picked if picked is not None else [{"Image": image, "reason": "", "stage": None, "prob": None}
                                              for image in stage1_images(workdir)]
    present, gone = [], []
    for row in rows:
        (present if (npy_dir / f"{row['Image']}.npy").is_file() else gone).append(row)
    gone = [row["Image"] for row in gone]
    if gone:
        where = f"pick list {pick}" if picked is not None else pipeline.DCM_TABLE
        notes.append(f"{len(gone)} image(s) of the {where} are no longer in {npy_dir}, skipped: {_listed(gone)}")

    prefill, bone = instance_prefill(workdir), pipeline.stage(BONE_TASK).number
    items = []
    for row in present:
        background, why = image_background(npy_dir / f"{row['Image']}.npy", cfg)
        items.append(Item(row["Image"], background, why, row["reason"], row["stage"], row["prob"],
                          {bone: prefill[row["Image"]]} if row["Image"] in prefill else {}))
    session = Session(workdir, labels_dir, asked, items, notes, log)
    for s in qc_stages():  # the answers already in the label files
        for bak in label_backgrounds(s):
            known = session.writers[session.label_path(s, bak)].read().labels
            for item in items:
                if item.image in known and (bak is None or item.background == bak):
                    item.answers[s.number] = known[item.image]

    per_background = " and ".join(str(s.number) for s in asked if s.per_background)
    odd = [item.image for item in items if item.background is None]
    if per_background and odd:
        session.note(f"{len(odd)} image(s) of neither background (or too large): stage(s) {per_background} "
                     f"skipped for them ({_listed(odd)})")
    if picked is None:  # never show what is labelled already
        done = [item for item in items if not has_open_question(item, asked)]
        if done:
            session.note(f"{len(done)} image(s) already labelled for every question that applies: not shown")
        session.items = [item for item in items if has_open_question(item, asked)]
        session.by_image = {item.image: item for item in session.items}
    return session


# --- the web server ------------------------------------------------------------------------


def static_file(name: str) -> bytes:
    """A file of the page (package data in hbr/labelling/static/)."""
    return (resources.files("hbr.labelling") / "static" / name).read_bytes()


def _message(exc: Exception) -> str:
    """An exception's message (a KeyError's str() would add quotes)."""
    return str(exc.args[0]) if exc.args else str(exc)


def make_handler(session: Session, host: str = "127.0.0.1") -> type[BaseHTTPRequestHandler]:
    """The request handler of a session's server listening on `host`."""
    # On this machine's own address, answer only requests addressed to it: a web page
    # elsewhere that points one of its names at 127.0.0.1 (DNS rebinding) cannot then
    # read or write the labels. Through `ssh -L` the browser still says localhost.
    local = host in LOOPBACK

    class Handler(BaseHTTPRequestHandler):
        server_version = "hbr-labelling"

        def _host_allowed(self) -> bool:
            name = urlparse(f"//{self.headers.get('Host', '')}").hostname or ""
            if not local or name in LOOPBACK:
                return True
            self._error(403, f"use http://127.0.0.1:{self.server.server_address[1]}/ to reach this page")
            return False

        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            pass  # one line per answer is printed by the session; requests would drown it

        def _send(self, status: int, body: bytes, content_type: str, extra: Optional[dict] = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": message})

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if not self._host_allowed():
                return
            url = urlparse(self.path)
            path = unquote(url.path)
            if path in ("/", "/index.html"):
                self._send(200, static_file("label.html"), STATIC_FILES["label.html"])
            elif path.startswith("/static/") and path[len("/static/"):] in STATIC_FILES:
                name = path[len("/static/"):]
                self._send(200, static_file(name), STATIC_FILES[name] + "; charset=utf-8")
            elif path == "/api/session":
                with session.lock:
                    self._json(200, session.view())
            elif path.startswith("/image/") and path.endswith(".png"):
                data = session.png(path[len("/image/"):-len(".png")])
                if data is None:
                    self._error(404, f"no image {path}")
                else:
                    self._send(200, data, "image/png")
            elif path == "/labels.tsv":
                self._labels(parse_qs(url.query))
            else:
                self._error(404, f"no page {path}")

        def _labels(self, query: dict) -> None:
            try:
                number = int(query.get("stage", [""])[0])
                name, text = session.label_text(number, query.get("bak", [None])[0])
            except (KeyError, ValueError) as exc:
                self._error(400, f"labels.tsv?stage=N[&bak=black|white]: {_message(exc)}")
                return
            except (HbrError, OSError) as exc:
                self._error(500, str(exc))
                return
            self._send(200, text.encode("utf-8"), "text/tab-separated-values; charset=utf-8",
                       {"Content-Disposition": f'attachment; filename="{name}"'})

        def do_POST(self) -> None:  # noqa: N802
            if not self._host_allowed():
                return
            # JSON only: a browser cannot send it from another site's page without asking
            # this server first (CORS), so no other site can write the user's labels
            if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                self._error(415, "send application/json")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._error(400, "the request is not valid JSON")
                return
            path = urlparse(self.path).path
            try:
                if path == "/api/answer" and isinstance(body, dict):
                    result = {"item": session.answer(str(body.get("image")), body.get("stage"), body.get("label"))}
                elif path == "/api/undo":
                    result = session.undo()
                else:
                    self._error(404, f"no action {path}")
                    return
            except KeyError as exc:
                self._error(404, _message(exc))
            except ValueError as exc:
                self._error(409, str(exc))
            except (HbrError, OSError) as exc:  # the label file cannot be read or written
                session.log(f"error: {exc}")
                self._error(500, str(exc))
            else:
                self._json(200, result)

    return Handler


def make_server(session: Session, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server of the session's page on host:port (0: any free port), not yet serving."""
    server = ThreadingHTTPServer((host, port), make_handler(session, host))
    server.daemon_threads = True  # a browser's open connection never blocks stopping
    return server


@contextlib.contextmanager
def running_server(session: Session, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """The page's server answering in a background thread (tests, scripts); yields its URL."""
    server = make_server(session, host, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_url(server)
    finally:
        server.shutdown()
        server.server_close()


def server_url(server: ThreadingHTTPServer) -> str:
    """The page's address."""
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


# --- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line (nothing heavy is imported for it: -h is instant)."""
    choices = ["all"] + [str(s.number) for s in qc_stages()]
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("work"), metavar="DIR",
                        help="work directory where stage 1 has run (default: ./work)")
    parser.add_argument("--labels", type=Path, default=None, metavar="DIR",
                        help="label folder the answers are written to (default: the repository's labels/)")
    parser.add_argument("--stage", choices=choices, default=None, metavar="|".join(choices),
                        help="the question(s) to ask: a QC stage, or all in chain order (default: the pick "
                             "list's stage when it names one, else all)")
    parser.add_argument("--pick", type=Path, default=None, metavar="PICK.tsv",
                        help="pick list TSV (columns Image, reason; optional stage, prob); default: every "
                             "stage-1 image not labelled yet")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="YAML config for the background values (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. background.white=255 (repeatable)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; use ssh -L from afar)")
    parser.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0: any free port)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the labelling page until Ctrl-C: 0 done, 1 a problem with the input or the port,
    2 a bad command line (130: interrupted before the page started)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # -h (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0)
    from hbr.cli import DEFAULT_LABELS, call_reporting_errors
    from hbr.config import load_config

    labels_dir = args.labels or DEFAULT_LABELS
    status, session = call_reporting_errors(PROG, lambda: build_session(
        args.workdir, labels_dir, args.stage, args.pick, load_config(args.config, args.overrides),
        log=lambda line: print(f"{PROG}: {line}", flush=True)))
    if status:
        return status
    if not session.items:
        print(f"{PROG}: nothing to label: every image is labelled for the question(s) asked")
        return 0
    try:
        server = make_server(session, args.host, args.port)
    except OSError as exc:  # port taken, address not of this machine
        print(f"{PROG}: error: cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
              "choose another --port (0: any free one)", file=sys.stderr)
        return 1
    print(f"{PROG}: {len(session.items)} image(s) to label; answers go to {labels_dir}")
    print(f"{PROG}: open {server_url(server)} (from another machine: ssh -L {server.server_address[1]}:"
          f"127.0.0.1:{server.server_address[1]} THIS_HOST); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"\n{PROG}: stopped; {len(session.history)} answer(s) written to {labels_dir}")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
