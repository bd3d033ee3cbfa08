"""``python -m tinker_server``: same as ``tinker serve``."""

from .serve import serve

if __name__ == "__main__":
    serve(prog_name="python -m tinker_server")
