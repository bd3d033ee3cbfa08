"""Pure builders of command results (plain data in, :class:`Result` out).

Each function returns the JSON form (spec §5.5: full model dumps, datetimes
later written with ``str()``) together with the tables people see (§5.4).
"""

from __future__ import annotations

from typing import Any

from ._format import format_bool, format_size, format_time, plural
from ._output import Result, Table
from ._paging import Page

__all__ = [
    "checkpoint_result",
    "checkpoints_result",
    "download_result",
    "list_title",
    "run_result",
    "runs_result",
    "session_result",
    "sessions_result",
]


def list_title(page: Page, noun: str, empty: str, suffix: str = "") -> str:
    shown = len(page.items)
    if shown == 0:
        return empty
    title = plural(shown, noun) + suffix
    not_shown = page.not_shown
    if not_shown:
        title += f" ({not_shown} more not shown, use --limit to see more)"
    elif page.more:
        title += " (more not shown, use --limit to see more)"
    return title


def _lora(run: Any, info: bool = False) -> str:
    if not run.is_lora:
        return "No"
    if run.lora_rank is None:
        return "Yes"
    return f"Yes (Rank {run.lora_rank})" if info else f"Rank {run.lora_rank}"


def _status(run: Any) -> str:
    return "Failed" if run.corrupted else "Active"


def runs_result(page: Page) -> Result:
    rows = [
        [
            run.training_run_id,
            run.base_model,
            run.model_owner,
            _lora(run),
            format_time(run.last_request_time),
            _status(run),
        ]
        for run in page.items
    ]
    table = Table(
        list_title(page, "training run", "No training runs found"),
        ["Run ID", "Base Model", "Owner", "LoRA", "Last Update", "Status"],
        rows,
    )
    return Result({"runs": [run.model_dump() for run in page.items]}, [table])


def run_result(run: Any) -> Result:
    rows = [
        ["Run ID", run.training_run_id],
        ["Base Model", run.base_model],
        ["Owner", run.model_owner],
        ["LoRA", _lora(run, info=True)],
        ["Last Update", format_time(run.last_request_time)],
        ["Status", _status(run)],
    ]
    for label, checkpoint in (
        ("Last Training Checkpoint", run.last_checkpoint),
        ("Last Sampler Checkpoint", run.last_sampler_checkpoint),
    ):
        if checkpoint is not None:
            rows.append([label, checkpoint.checkpoint_id])
            rows.append(["  - Time", format_time(checkpoint.time)])
            rows.append(["  - Path", checkpoint.tinker_path])
    if run.user_metadata:
        rows.append(["Metadata", ""])
        rows.extend([f"  - {key}", str(value)] for key, value in run.user_metadata.items())
    table = Table(f"Training Run: {run.training_run_id}", ["Property", "Value"], rows)
    return Result(run.model_dump(), [table])


def checkpoints_result(page: Page, run_id: str | None) -> Result:
    rows = [
        [
            ckpt.checkpoint_id,
            ckpt.checkpoint_type,
            format_size(ckpt.size_bytes),
            format_bool(ckpt.public),
            format_time(ckpt.time),
            ckpt.tinker_path,
        ]
        for ckpt in page.items
    ]
    if run_id is not None:
        title = list_title(page, "checkpoint", f"No checkpoints found for run {run_id}", f" for run {run_id}")
    else:
        title = list_title(page, "checkpoint", "No checkpoints found")
    table = Table(title, ["Checkpoint ID", "Type", "Size", "Public", "Created", "Path"], rows)
    data: dict[str, Any] = {} if run_id is None else {"run_id": run_id}
    data["checkpoints"] = [ckpt.model_dump() for ckpt in page.items]
    return Result(data, [table])


def checkpoint_result(ckpt: Any) -> Result:
    rows = [
        ["Checkpoint ID", ckpt.checkpoint_id],
        ["Type", ckpt.checkpoint_type],
        ["Tinker Path", ckpt.tinker_path],
    ]
    if ckpt.size_bytes is not None:
        rows.append(["Size", format_size(ckpt.size_bytes)])
    rows += [
        ["Public", format_bool(ckpt.public)],
        ["Created", format_time(ckpt.time)],
        ["Training Run ID", ckpt.tinker_path.removeprefix("tinker://").split("/")[0]],
    ]
    table = Table(f"Checkpoint: {ckpt.checkpoint_id}", ["Property", "Value"], rows)
    return Result(ckpt.model_dump(), [table])


def download_result(path: str, destination: str, size: int | None) -> Result:
    rows = [["Checkpoint Path", path]]
    if size:
        rows.append(["Archive Size", format_size(size)])
    rows.append(["Extracted to", destination])
    data: dict[str, Any] = {"checkpoint_path": path, "destination": destination}
    if size:
        data["file_size_bytes"] = size
    return Result(data, [Table(f"Checkpoint Download: {path}", ["Property", "Value"], rows)])


def sessions_result(page: Page) -> Result:
    table = Table(
        list_title(page, "session", "No sessions found"),
        ["Session ID"],
        [[session_id] for session_id in page.items],
    )
    return Result({"sessions": list(page.items)}, [table])


def session_result(session_id: str, session: Any) -> Result:
    rows = [["Session ID", session_id]]
    rows.append(["Training Runs", str(len(session.training_run_ids))])
    rows.extend(["  - Run", run_id] for run_id in session.training_run_ids)
    rows.append(["Samplers", str(len(session.sampler_ids))])
    rows.extend(["  - Sampler", sampler_id] for sampler_id in session.sampler_ids)
    data = {"session_id": session_id, **session.model_dump()}
    return Result(data, [Table(f"Session: {session_id}", ["Property", "Value"], rows)])
