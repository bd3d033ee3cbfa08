"""``tinker checkpoint``: list, inspect, download, publish and delete checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .._command import api_command
from .._listing import limit_option, page_size_option
from .._options import State

PAGE_SIZE = 1000  # checkpoints per request (all runs)

_PATH_FORMAT = (
    "Expected tinker://RUN_ID/weights/NAME or tinker://RUN_ID/sampler_weights/NAME, e.g. tinker://run-123/weights/0001."
)


@click.group()
def checkpoint() -> None:
    """List, inspect, download, publish and delete checkpoints."""


def _parse(path: str) -> Any:
    """The parsed tinker path, or a CliError naming the expected form."""
    from tinker.types import ParsedCheckpointTinkerPath

    from .._errors import CliError

    try:
        return ParsedCheckpointTinkerPath.from_tinker_path(path)
    except ValueError as exc:
        raise CliError(f"Invalid checkpoint path: {exc}", _PATH_FORMAT) from None


def _find(rest: Any, path: str) -> Any:
    """The Checkpoint whose tinker path is ``path`` (looked up in its run)."""
    import tinker

    from .._errors import CliError

    parsed = _parse(path)
    try:
        response = rest.list_checkpoints(parsed.training_run_id).result()
    except tinker.NotFoundError as exc:
        raise CliError(
            f"Checkpoint not found: {path}",
            f"There is no training run {parsed.training_run_id!r} (`tinker run list` shows your runs). Details: {exc}",
        ) from exc
    for ckpt in response.checkpoints:
        if ckpt.tinker_path == path:
            return ckpt
    raise CliError(
        f"Checkpoint not found: {path}",
        f"`tinker checkpoint list --run-id {parsed.training_run_id}` shows the run's checkpoints.",
    )


@api_command(checkpoint, "list")
@click.option("--run-id", metavar="RUN_ID", help="Only the checkpoints of this training run.")
@limit_option("checkpoints")
@page_size_option(PAGE_SIZE)
def list_checkpoints(state: State, run_id: str | None, limit: int, page_size: int) -> Any:
    """List checkpoints, newest first: all yours, or one run's.

    --limit applies only without --run-id: a run's checkpoints come in one piece.
    """
    from .._client import rest_client
    from .._paging import Page
    from .._views import checkpoints_result

    rest = rest_client(state)
    if run_id is not None:
        response = rest.list_checkpoints(run_id).result()
        return checkpoints_result(Page(list(response.checkpoints), None, False), run_id)

    from .._listing import fetch_with_progress

    def fetch_page(count: int, offset: int) -> tuple[list[Any], int | None]:
        response = rest.list_user_checkpoints(limit=count, offset=offset).result()
        total = response.cursor.total_count if response.cursor is not None else None
        return response.checkpoints, total

    page = fetch_with_progress(fetch_page, limit=limit, page_size=page_size, noun="checkpoints")
    return checkpoints_result(page, None)


@api_command(checkpoint, "info")
@click.argument("checkpoint_path")
def checkpoint_info(state: State, checkpoint_path: str) -> Any:
    """Show the details of a checkpoint (CHECKPOINT_PATH is tinker://...)."""
    from .._client import rest_client
    from .._views import checkpoint_result

    _parse(checkpoint_path)
    return checkpoint_result(_find(rest_client(state), checkpoint_path))


@api_command(checkpoint, "publish")
@click.argument("checkpoint_path")
def publish(state: State, checkpoint_path: str) -> Any:
    """Make a checkpoint public (readable by other users)."""
    return _set_public(state, checkpoint_path, True)


@api_command(checkpoint, "unpublish")
@click.argument("checkpoint_path")
def unpublish(state: State, checkpoint_path: str) -> Any:
    """Make a checkpoint private again."""
    return _set_public(state, checkpoint_path, False)


def _set_public(state: State, path: str, public: bool) -> Any:
    import tinker

    from .._client import rest_client
    from .._errors import CliError
    from .._output import Result

    _parse(path)
    rest = rest_client(state)
    # The SDK retries 409 ("already public/private") for minutes; look first.
    if _find(rest, path).public == public:
        other = "unpublish" if public else "publish"
        raise CliError(
            f"Checkpoint is already {'public' if public else 'private'}: {path}",
            f"Nothing to do; `tinker checkpoint {other}` reverses it.",
        )
    try:
        if public:
            rest.publish_checkpoint_from_tinker_path(path).result()
        else:
            rest.unpublish_checkpoint_from_tinker_path(path).result()
    except tinker.PermissionDeniedError as exc:
        raise CliError(
            "Permission denied: only the owner of the training run can change it.",
            f"Use the owner's API key. Details: {exc}",
        ) from exc
    verb = "Published" if public else "Unpublished"
    return Result({"checkpoint_path": path, "public": public}, message=f"{verb} {path}")


@api_command(checkpoint, "delete")
@click.argument("checkpoint_path")
@click.option("-y", "--yes", is_flag=True, help="Delete without asking for confirmation.")
def delete(state: State, checkpoint_path: str, yes: bool) -> Any:
    """Delete a checkpoint, permanently.

    Without --yes, shows the checkpoint and asks first (on stderr, so that
    stdout stays clean for --format json).
    """
    from .._client import rest_client
    from .._errors import CliError
    from .._output import Result, emit
    from .._views import checkpoint_result

    _parse(checkpoint_path)
    rest = rest_client(state)
    if not yes:
        try:
            emit(checkpoint_result(_find(rest, checkpoint_path)), "table", err=True)
        except CliError:
            click.echo(f"Checkpoint path: {checkpoint_path}", err=True)
        click.echo("", err=True)
        click.echo("WARNING: This action is permanent and cannot be undone.", err=True)
        if not click.confirm("Are you sure you want to delete this checkpoint?", default=False, err=True):
            click.echo("Deletion cancelled.", err=True)
            return Result({"checkpoint_path": checkpoint_path, "deleted": False})
    rest.delete_checkpoint_from_tinker_path(checkpoint_path).result()
    return Result(
        {"checkpoint_path": checkpoint_path, "deleted": True},
        message=f"Deleted {checkpoint_path}",
    )


@api_command(checkpoint, "download")
@click.argument("checkpoint_path")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to extract into (created if missing; default: the current directory).",
)
@click.option("--force", is_flag=True, help="Replace the target directory if it exists.")
def download(state: State, checkpoint_path: str, output: Path | None, force: bool) -> Any:
    """Download a checkpoint and extract it into a directory.

    The files land in OUTPUT/<run-id>_<kind>_<name>/, e.g.
    ./run-123_weights_final/ for tinker://run-123/weights/final.  The archive is
    extracted as it downloads, into a temporary directory next to it that is
    moved into place only when complete.
    """
    from .._client import rest_client
    from .._download import fetch_and_extract
    from .._errors import CliError
    from .._views import download_result

    parsed = _parse(checkpoint_path)
    output_dir = output if output is not None else Path.cwd()
    target = output_dir / checkpoint_path.removeprefix("tinker://").replace("/", "_")
    if (target.exists() or target.is_symlink()) and not force:
        raise CliError(
            f"Target directory already exists: {target}",
            "Use --force to overwrite or choose a different output directory.",
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(
            f"Failed to save checkpoint: {exc}",
            f"Check that you can create and write to {output_dir}.",
        ) from exc
    rest = rest_client(state)
    archive = rest.get_checkpoint_archive_url_from_tinker_path(checkpoint_path).result()
    size = fetch_and_extract(archive.url, target, show_progress=not state.json, label=parsed.checkpoint_id)
    return download_result(checkpoint_path, str(target), size)
