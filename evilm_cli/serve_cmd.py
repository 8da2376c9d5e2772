"""`evilm serve`: a search service and a web page over one or more indexes (docs/serving.md)."""

from __future__ import annotations

import typer

from evilm_cli import options
from evilm_cli.common import console


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        index: list[str] = typer.Option(..., "--index", help="An index directory, or NAME=DIR (repeatable; the "
                                        "first is the default)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (another than loopback needs "
                                 "--token or --insecure)."),
        port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free port, printed)."),
        token: str = typer.Option(None, "--token", envvar="EVILM_SERVE_TOKEN", show_envvar=True,
                                  help="Bearer token every /api request must carry."),
        insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without a token."),
        exact: bool = typer.Option(False, "--exact", help="Scan every embedding even where an index has an ANN index."),
        max_batch: int = typer.Option(16, "--max-batch", min=1, help="Queries embedded in one forward pass at most "
                                      "(1: one at a time)."),
        max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0.0, help="How long the first query of a batch "
                                          "waits for others."),
        in_flight: int = typer.Option(2, "--batches-in-flight", min=1, help="Batches computing at once (while one "
                                      "computes, the next gathers)."),
        max_k: int = typer.Option(100, "--max-k", min=1, help="Results per query at most."),
        qa: str = typer.Option(None, "--qa", help="A qa, mc or pre-trained checkpoint (dir, run dir or hf-hub:ID): "
                               "POST /api/clips/{key}/answer answers questions about a clip with it."),
        device: str = options.device("serve"),
        precision: str = options.precision("serve"),
        threads: int = options.threads("serve"),
        runtime: str = options.runtime("serve"),
    ):
        """Serve text-to-video search over indexes, with a web page at /.

        The model is loaded once; an index built from an ONNX export is served without torch. The
        API (OpenAPI docs at /docs): /api/search, /api/similar, /api/clips/{key}, its frames.jpg and
        video (range requests), /healthz, /readyz, /metrics (Prometheus). Stop it with SIGTERM or
        Ctrl-C: requests in flight finish first.

        Example: evilm serve --index runs/synthetic/index
        Then:    curl 'http://127.0.0.1:8000/api/search?q=a+red+star+shrinks&k=5'
        Answers:  evilm serve --index runs/synthetic/index --qa runs/synthetic/qa
        On a lab network: EVILM_SERVE_TOKEN=... evilm serve --index /data/index --host 0.0.0.0 --port 8080
        """
        from evilm_core.serve.server import serve as run

        run(index, host=host, port=port, token=token, insecure=insecure, exact=exact, max_batch=max_batch,
            max_wait_ms=max_wait_ms, batches_in_flight=in_flight, max_k=max_k, qa=qa, device=device,
            precision=precision, threads=threads, runtime=runtime,
            announce=lambda url: console.print(f"evilm serve: {url} (API docs: {url}docs)", highlight=False))
